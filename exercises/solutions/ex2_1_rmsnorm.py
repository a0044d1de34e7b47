"""Exercise 2.1 — reference solution: minilora's own plain-PyTorch RMSNorm."""
from minilora.kernels.rmsnorm import rms_norm_reference as rms_norm

__all__ = ["rms_norm"]

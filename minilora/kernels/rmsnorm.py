"""RMSNorm: $y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\cdot w$.

Shapes: x (..., hidden), weight (hidden,). Like Llama, the statistics are computed in fp32 and the normalized
activations are cast back to the input dtype *before* the multiplication by the weight.
"""
import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)

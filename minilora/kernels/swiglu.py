"""SwiGLU and GeGLU gated activations: h = act(gate) * up.

Shapes: gate and up (..., intermediate). SwiGLU uses $\\mathrm{silu}(g) = g\\,\\sigma(g)$; GeGLU uses GELU (exact erf
form, or the tanh approximation).
"""
import torch
import torch.nn.functional as F


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def geglu_reference(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(gate, approximate=approximate) * up

"""Exercise 3.2 — the SwiGLU backward formula, by hand.

Read lessons/week3_kernels_rope_swiglu.py first (section 2 derives what a fused backward must recompute). Replace
each `raise NotImplementedError(...)` with your code, then run `pytest -m ex3_2` until it is green. Plain PyTorch
is fine here (no autograd: the tests check your formula against autograd).

The forward is h = silu(g) * u with silu(g) = g * sigmoid(g), elementwise over tensors of any shape (in a Llama MLP:
g = gate_proj(x), u = up_proj(x), both (tokens, intermediate)). Given the upstream gradient dh (same shape):
  - dL/du = dh * silu(g)
  - dL/dg = dh * u * silu'(g), where you derive silu'(g) from the product and chain rules using
    sigmoid'(g) = sigmoid(g) * (1 - sigmoid(g)).
Write silu'(g) in terms of s = sigmoid(g) and g only: that is what the Triton kernel recomputes from g, instead of
saving silu(g) from the forward.
"""
import torch


def silu_derivative(g: torch.Tensor) -> torch.Tensor:
    """d silu(g) / dg, elementwise, same shape as g."""
    raise NotImplementedError("Exercise 3.2: silu_derivative — see lessons/week3_kernels_rope_swiglu.py")


def swiglu_backward(dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dg, du) for h = silu(g) * u, given dh; all four tensors share one shape."""
    raise NotImplementedError("Exercise 3.2: swiglu_backward — see lessons/week3_kernels_rope_swiglu.py")

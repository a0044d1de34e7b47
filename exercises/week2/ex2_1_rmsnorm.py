"""Exercise 2.1 — RMSNorm, the normalization every Llama-family layer uses twice.

Read lessons/week2_model_family.py first. Replace the `raise NotImplementedError(...)` with your code, then run
`pytest -m ex2_1` until it is green.
"""
import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Return $y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\cdot w$ over the last dimension.

    x (..., hidden), weight (hidden,) → y with x's shape and dtype. Unlike LayerNorm there is no mean to subtract
    and no bias: each row is only divided by its root-mean-square, then scaled per channel by `weight`.
    Do it the way Llama does, because low precision loses digits here: compute mean(x²) and the normalized row in
    float32, cast the normalized row back to x's dtype, and only then multiply by `weight`.
    """
    raise NotImplementedError("Exercise 2.1: rms_norm — see lessons/week2_model_family.py")

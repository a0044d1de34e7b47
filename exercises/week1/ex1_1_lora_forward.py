"""Exercise 1.1 — the LoRA forward pass and the merged weight.

Read lessons/week1_lora.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex1_1` until it is green.
"""
import torch


def lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float,
                 r: int) -> torch.Tensor:
    """Return W x + (alpha / r) B A x for a batch of rows x (N, in); W (out, in), A (r, in), B (out, r).

    Compute the low-rank path as two thin matmuls, never forming B @ A.
    """
    raise NotImplementedError("Exercise 1.1: lora_forward — see lessons/week1_lora.py")


def merged_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """Return the single (out, in) matrix whose product with x equals lora_forward(x, ...)."""
    raise NotImplementedError("Exercise 1.1: merged_weight — see lessons/week1_lora.py")

"""Exercise 5.1 — the LoRA backward by hand: dX, dA, dB.

Read lessons/week5_triton_fast_lora.py first (section 3 derives these). Replace each `raise NotImplementedError(...)`
with your code, then run `pytest -m ex5_1` until it is green. Plain PyTorch matmuls, no autograd.

Forward of one LoRA projection, rows of x are tokens:
    y = x W^T + s (x A^T) B^T        x (N, in), W (out, in) frozen, A (r, in), B (out, r), s = alpha / r
Given the upstream gradient dy = dL/dy (N, out), return
    dx = dL/dx (N, in),  dA = dL/dA (r, in),  dB = dL/dB (out, r).
W is frozen: no dW. Use the chain rule on each matmul (for Y = X M^T: dX = dY M and dM = dY^T X), and keep every
intermediate thin: products like (dy B) are (N, r); never form the (out, in) matrix B A.
"""
import torch


def lora_backward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: float,
                  dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (dx, dA, dB) for y = x W^T + s (x A^T) B^T."""
    raise NotImplementedError("Exercise 5.1: lora_backward — see lessons/week5_triton_fast_lora.py")

"""Exercise 3.5 — quantize one block of weights to NF4 indices.

Read lessons/week3_nf4.py first (section 2). Replace the `raise NotImplementedError(...)` with your code, then run
`pytest -m ex3_5` until it is green.
"""
import torch


def quantize_block(block: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 1-D float32 block (n,) with the sorted codebook `levels` (16,).

    1. absmax = the largest |value| in the block (a float32 scalar tensor);
    2. scaled = block / absmax, now in [-1, 1] (an all-zero block: use scaled = 0);
    3. each scaled value's index = the position of its NEAREST level (ties go to the lower level).

    Return (indices as uint8 (n,), absmax as a float32 0-d tensor). Hint: the nearest level is the one with the
    smallest |scaled - level|; `argmin` over a (n, 16) table of distances does it.
    """
    raise NotImplementedError("Exercise 3.5: quantize_block — see lessons/week3_nf4.py")

"""Exercise 4.3 — build the 8-bit dynamic map and quantize one block with it.

Read lessons/week4_8bit.py first (section 2). Replace each `raise NotImplementedError(...)` with your code, then run
`pytest exercises -m ex4_3` until it is green.
"""
import torch


def dynamic_map(signed: bool = True) -> torch.Tensor:
    """The 256 levels of the 8-bit dynamic data type, sorted ascending, float32.

    For each decade i = 0 … 6 (scale 10^(i-6): 1e-6 … 1):
      - cut [0.1, 1] into n equal bins with `torch.linspace(0.1, 1, n + 1, dtype=torch.float32)`, where
        n = 2^i when signed and 2^(i+1) when unsigned (no sign bit: one more fraction bit);
      - the bin centres (left + right) / 2, times the decade's scale, are levels; when signed, their negatives too.
    Then add 0.0 and 1.0 and sort: 2·127 + 2 = 256 values either way.
    (Compute the centres in float32 as above and multiply by the Python float scale, so the values are bit for bit
    the library's.)
    """
    raise NotImplementedError("Exercise 4.3: dynamic_map — see lessons/week4_8bit.py")


def quantize_block(block: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 1-D float32 block (n,) with the sorted 256-level `code`.

    absmax = max |value| (a float32 0-d tensor); scaled = block · (1 / absmax); each value's index = the NEAREST
    level (a tie goes to the lower one). An all-zero block: absmax 0 and every index 0.
    Return (indices as uint8 (n,), absmax). Hint: the boundaries between neighbouring levels are their midpoints,
    and `torch.bucketize` counts how many boundaries lie below each value.
    """
    raise NotImplementedError("Exercise 4.3: quantize_block — see lessons/week4_8bit.py")

"""Exercise 3.6 — pack two 4-bit indices into each byte, and unpack them.

Read lessons/week3_nf4.py first (section 2). Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex3_6` until it is green.
"""
import torch


def pack(indices: torch.Tensor) -> torch.Tensor:
    """uint8 indices (n,), each in [0, 16) → uint8 bytes (ceil(n/2),).

    Byte i holds indices[2i] in its HIGH nibble and indices[2i+1] in its LOW nibble: (a << 4) | b, as bitsandbytes
    stores them. If n is odd, pad with index 7 (the level 0.0) before packing.
    """
    raise NotImplementedError("Exercise 3.6: pack — see lessons/week3_nf4.py")


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse: bytes (ceil(n/2),) → the first n uint8 indices. High nibble: byte >> 4; low: byte & 0xF."""
    raise NotImplementedError("Exercise 3.6: unpack — see lessons/week3_nf4.py")

"""Exercise 3.7 — dequantize NF4: from packed bytes and block scales back to a float tensor.

Read lessons/week3_nf4.py first (section 3). Replace the `raise NotImplementedError(...)` with your code, then run
`pytest -m ex3_7` until it is green.
"""
import torch


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: tuple,
               levels: torch.Tensor) -> torch.Tensor:
    """Rebuild the float32 tensor of `shape` (numel n) from its NF4 bytes.

    packed: uint8 (ceil(n/2),), first value of each pair in the high nibble; absmax: float32 (ceil(n/blocksize),),
    one scale per block of `blocksize` consecutive values of the flattened tensor (the last block may be shorter);
    levels: the 16 NF4 levels. Value k = levels[index k] · absmax[k // blocksize]. Return float32 of `shape`.
    """
    raise NotImplementedError("Exercise 3.7: dequantize — see lessons/week3_nf4.py")

"""Exercise 4.4 — one step of 8-bit Adam on one parameter: dequantize the moments, update, requantize.

Read lessons/week4_8bit.py first (section 4). Replace the `raise NotImplementedError(...)` with your code, then run
`pytest exercises -m ex4_4` until it is green.
"""
import torch

from minilora.quant.dynamic8 import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit

BLOCKSIZE = 256


def adam8bit_update(param: torch.Tensor, grad: torch.Tensor, state: dict, step: int, lr: float = 1e-3,
                    betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    """Update `param` (float32) and its 8-bit `state` in place, for Adam step number `step` (1, 2, ...).

    `state` holds what minilora.train.AdamW8bit stores for a large tensor:
      exp_avg_codes (uint8, param's shape), exp_avg_absmax (float32, one per block of 256)    — m, signed map
      exp_avg_sq_codes, exp_avg_sq_absmax                                                      — v, unsigned map
    1. m = dequantize_blockwise_8bit(codes, absmax, dynamic_map(True), BLOCKSIZE); v likewise with
       dynamic_map(False) (float32, the param's shape);
    2. m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²   (g = grad in float32);
    3. param ← param·(1 − lr·weight_decay), then param ← param − lr/(1 − β1^step) · m / (√v / √(1 − β2^step) + eps);
    4. requantize: codes, absmax = quantize_blockwise_8bit(m, dynamic_map(True), BLOCKSIZE, rounding="grid")
       (v with the unsigned map) and copy them into the state's tensors (`.copy_`), which stay uint8 / float32.
    """
    raise NotImplementedError("Exercise 4.4: adam8bit_update — see lessons/week4_8bit.py")

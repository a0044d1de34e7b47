"""Exercise 4.4 — reference solution."""
import math

import torch

from minilora.quant.dynamic8 import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit

BLOCKSIZE = 256


@torch.no_grad()
def adam8bit_update(param, grad, state, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    beta1, beta2 = betas
    maps = {"exp_avg": dynamic_map(True), "exp_avg_sq": dynamic_map(False)}
    m = dequantize_blockwise_8bit(state["exp_avg_codes"], state["exp_avg_absmax"], maps["exp_avg"], BLOCKSIZE)
    v = dequantize_blockwise_8bit(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"], maps["exp_avg_sq"],
                                  BLOCKSIZE)
    g = grad.float()
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    param.mul_(1 - lr * weight_decay)
    param.sub_(lr / (1 - beta1 ** step) * m / (v.sqrt() / math.sqrt(1 - beta2 ** step) + eps))
    for name, value in (("exp_avg", m), ("exp_avg_sq", v)):
        codes, absmax = quantize_blockwise_8bit(value, maps[name], BLOCKSIZE, rounding="grid")
        state[f"{name}_codes"].copy_(codes)
        state[f"{name}_absmax"].copy_(absmax)

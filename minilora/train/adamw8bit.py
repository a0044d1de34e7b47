"""AdamW with 8-bit states: Adam's two moments stored as blockwise 8-bit dynamic codes (Dettmers et al., 2022).

AdamW keeps two numbers per trainable parameter, m (the running mean of the gradient) and v (of its square): 8 bytes
a parameter in float32, twice the weights of a 16-bit model. Stored blockwise in 8 bits (`minilora.quant.dynamic8`:
1 byte a value + one float32 absmax per block of 256) they take 2 + 8/256 = 2.03 bytes. Each step, per parameter:

    m, v   ← dequantize(codes, absmax)                 (float32, this parameter only)
    m      ← β1·m + (1 − β1)·g ;   v ← β2·v + (1 − β2)·g²
    p      ← p·(1 − lr·λ) − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
    codes, absmax ← quantize(m), quantize(v)          (m: signed map; v ≥ 0: unsigned map, one more fraction bit)

The dynamic map keeps relative precision over six decades, which matters because the moments of one block span
several orders of magnitude; a block of 256 bounds how far one large value stretches its neighbours' scale.
As bitsandbytes' AdamW8bit does, a tensor smaller than `min_8bit_size` (4096) keeps float32 states (8-bit saves
little there; biases and norms). The arithmetic and the rounding follow bitsandbytes' CPU kernels (0.50.2):
after the same steps on the same gradients the codes, absmax and parameters are theirs.

Why rounding="grid" (the default; see dynamic8.py) and not the exact nearest level: v ≈ m², so a value at 1e-4
of its block's absmax in m sits near 1e-8 in v — below the unsigned map's smallest level (3.25e-7). Rounded to
the nearest level, v decodes to exactly 0 while m does not, and m / (√v + ε) with ε = 1e-8 throws the parameter
by hundreds. The grid's coarse step near 0 never decodes a v below ~1.5e-5·absmax, which bounds the step.
rounding="nearest" is kept to show this (tests/test_adamw8bit.py).

The state holds tensors only (step, codes, absmax or the float32 moments), so it is saved as safetensors by the
trainer's checkpoints like torch's AdamW state.
"""
from __future__ import annotations

import math

import torch

from ..quant.dynamic8 import (
    MIN_8BIT_SIZE,
    OPTIMIZER_BLOCKSIZE,
    ROUNDINGS,
    dequantize_blockwise_8bit,
    quantize_blockwise_8bit,
    shared_dynamic_map,
)

STATE_KEYS_8BIT = ("exp_avg_codes", "exp_avg_absmax", "exp_avg_sq_codes", "exp_avg_sq_absmax")


class AdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 min_8bit_size: int = MIN_8BIT_SIZE, rounding: str = "grid", amsgrad: bool = False):
        if not lr >= 0:
            raise ValueError(f"learning rate must be ≥ 0, got {lr}")
        if not eps >= 0:
            raise ValueError(f"eps must be ≥ 0, got {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding={rounding!r}: choose 'nearest' or 'grid' (bitsandbytes' CPU kernel)")
        if amsgrad:
            raise ValueError("AdamW8bit does not implement amsgrad (neither does bitsandbytes'); use amsgrad=False")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, min_8bit_size=min_8bit_size,
                        rounding=rounding)
        super().__init__(params, defaults)

    # --- state ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _init_state(p: torch.Tensor, group: dict) -> dict:
        state = {"step": torch.tensor(0.0)}
        if p.numel() < group["min_8bit_size"]:  # small tensors: 32-bit moments, as bitsandbytes
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
            return state
        n_blocks = -(-p.numel() // OPTIMIZER_BLOCKSIZE)
        for name in ("exp_avg", "exp_avg_sq"):  # zeros with absmax 0: decode to 0 whatever the code
            state[f"{name}_codes"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
            state[f"{name}_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state.update(self._init_state(p, group))
                state["step"] += 1
                self._update(p, p.grad, state, group)
        return loss

    @staticmethod
    def _update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
        (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        t = float(state["step"])
        g = grad.float()
        p32 = p.float()  # a copy for 16-bit parameters; updated in float32, written back once
        bias1 = 1.0 - beta1 ** t
        bias2 = math.sqrt(1.0 - beta2 ** t)
        if "exp_avg" in state:  # 32-bit states, updated in place (the same formula, rearranged as bnb's 32-bit)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(g, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            if wd > 0:
                p32.mul_(1.0 - lr * wd)
            p32.add_(m / (v.sqrt() + eps * bias2), alpha=-lr * bias2 / bias1)
        else:
            m, v = dequantize_states(state, p.device)
            m.mul_(beta1).add_(g, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            denom = (v.sqrt() / bias2).add_(eps)
            if wd > 0:
                p32.mul_(1.0 - lr * wd)
            p32.addcdiv_(m, denom, value=-lr / bias1)
            quantize_states(state, m, v, group["rounding"])
        p.copy_(p32)

    # --- saving: tensors only; keep float32 scales float32 whatever the parameter's dtype ------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"]
        super().load_state_dict(state_dict)  # casts floating state to each parameter's dtype and device
        params = [p for g in self.param_groups for p in g["params"]]
        for idx, st in saved.items():
            p = params[int(idx)]
            mine = self.state[p]
            for key, value in st.items():
                if key != "step" and value.dtype in (torch.float32, torch.uint8):
                    mine[key] = value.to(p.device)  # float32 moments and absmax stay float32, codes uint8
            _check_loaded(p, mine)


def dequantize_states(state: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 (m, v) of one parameter from its 8-bit state."""
    m = dequantize_blockwise_8bit(state["exp_avg_codes"], state["exp_avg_absmax"], shared_dynamic_map(device, True),
                                  OPTIMIZER_BLOCKSIZE)
    v = dequantize_blockwise_8bit(state["exp_avg_sq_codes"], state["exp_avg_sq_absmax"],
                                  shared_dynamic_map(device, False), OPTIMIZER_BLOCKSIZE)
    return m, v


def quantize_states(state: dict, m: torch.Tensor, v: torch.Tensor, rounding: str = "grid") -> None:
    """Store float32 (m, v) into the 8-bit state: m on the signed map, v (≥ 0) on the unsigned one."""
    for name, value, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
        codes, absmax = quantize_blockwise_8bit(value, shared_dynamic_map(value.device, signed), OPTIMIZER_BLOCKSIZE,
                                                rounding)
        state[f"{name}_codes"].copy_(codes)
        state[f"{name}_absmax"].copy_(absmax)


def _check_loaded(p: torch.Tensor, state: dict) -> None:
    if "exp_avg_codes" not in state:
        return
    n_blocks = -(-p.numel() // OPTIMIZER_BLOCKSIZE)
    for name in ("exp_avg", "exp_avg_sq"):
        codes, absmax = state.get(f"{name}_codes"), state.get(f"{name}_absmax")
        if codes is None or absmax is None or codes.shape != p.shape or codes.dtype != torch.uint8 \
                or absmax.shape != (n_blocks,):
            raise ValueError(f"8-bit optimizer state {name} does not fit a parameter of shape {tuple(p.shape)} "
                             f"(codes {None if codes is None else tuple(codes.shape)}, absmax "
                             f"{None if absmax is None else tuple(absmax.shape)}): it was saved for another model")

"""Fast LoRA: the MLP, Q/K/V and O projections as autograd Functions with the backward written by hand.

One LoRA projection (rows of x are tokens; W frozen, A and B trained; s = alpha / r):

    y = x W^T + s (x A^T) B^T          x (N, in), W (out, in), A (r, in), B (out, r), y (N, out)

Its backward, given dy (N, out) — derived in lessons/week5_triton_fast_lora.py and checked there against autograd:

    dx = dy W + s (dy B) A             (N, in)   — dy B is only (N, r): never form the (out, in) matrix B A
    dA = s (dy B)^T x                  (r, in)
    dB = s dy^T (x A^T)                (out, r)  — x A^T (N, r) is kept from the forward, it is tiny
    (no dW: the base weight is frozen, so the biggest gradient of all is never computed or stored)

Why write it by hand when autograd could? Autograd saves every intermediate and allocates a fresh buffer for
each gradient. Written by hand we (1) save only x, the thin (N, r) products and the MLP's gate/up outputs,
(2) recompute silu cheaply instead of storing it, (3) overwrite dead buffers: the SwiGLU backward kernel below
writes h, d_gate and d_up into the memory of d_h, gate and up, and dx is accumulated in one buffer with
`addmm_` (five matmuls add into it, none allocates), and (4) dequantize a 4-bit base weight just in time, in the
forward and again in the backward, so its 16-bit copy lives only while its matmul runs.

The base layer can be an ``nn.Linear`` (16-bit weight) or anything that can hand over its dense weight — see
`dense_weight`. Lora dropout must be 0 (dropout would need its mask saved; the model falls back otherwise).
"""
from __future__ import annotations

import inspect
import weakref

import torch
from torch import nn

from ._triton import interpreter_on, tl, triton
from .swiglu import SILU, glu_forward


# ---------------------------------------------------------------------------------------------------------------
# The frozen base weight: 16-bit, or 4-bit dequantized just in time
# ---------------------------------------------------------------------------------------------------------------
def dense_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The base layer's (out, in) weight as a dense `dtype` tensor.

    nn.Linear: its weight (no copy when the dtype already matches). A quantized layer (e.g.
    `minilora.quant.linear4bit.Linear4bit`, whose ``weight`` holds uint8 NF4 codes): the first of ``dequantize``,
    ``dense_weight``, ``dequantized_weight`` it has, called now, so the dense copy lives only while it is used.
    """
    if isinstance(base, nn.Linear) or (isinstance(getattr(base, "weight", None), torch.Tensor)
                                       and base.weight.is_floating_point()):
        w = base.weight
        return w if w.dtype == dtype else w.to(dtype)
    for name in ("dequantize", "dense_weight", "dequantized_weight"):
        fn = getattr(base, name, None)
        if callable(fn):
            # minilora.quant.Linear4bit.dequantize(dtype) takes the dtype; other layers may take nothing
            w = fn(dtype) if _takes_dtype(fn) else fn()
            if not isinstance(w, torch.Tensor) or w.dim() != 2:
                raise TypeError(f"{type(base).__name__}.{name}() must return a 2-D (out, in) tensor")
            return w if w.dtype == dtype else w.to(dtype)
    raise TypeError(f"fast LoRA cannot get a dense weight from {type(base).__name__}: give it a floating-point "
                    "`weight` or a `dequantize()` method returning the (out, in) weight")


# Whether a dequantize method takes the dtype, remembered per function: `inspect.signature` costs ~15 µs, and this
# question is asked for every projection three times a step (forward, recomputed forward, backward). Keyed weakly
# by the function object (for a bound method: the class's function), so a method defined later is looked at anew.
_TAKES_DTYPE = {True: weakref.WeakKeyDictionary(), False: weakref.WeakKeyDictionary()}


def _takes_dtype(fn) -> bool:
    func = getattr(fn, "__func__", None)
    bound = func is not None  # a bound method's signature leaves out `self`
    key = func if bound else fn
    cache = _TAKES_DTYPE[bound]
    try:
        return cache[key]
    except (KeyError, TypeError):  # not seen yet, or not weakly referenceable (e.g. a builtin)
        pass
    takes = len(inspect.signature(fn).parameters) >= 1
    try:
        cache[key] = takes
    except TypeError:
        pass
    return takes


def _bias(base: nn.Module, dtype):
    b = getattr(base, "bias", None)
    if b is None:
        return None
    if b.requires_grad:
        raise ValueError("fast LoRA keeps the base layer frozen, but its bias requires grad: freeze it "
                         "(get_peft_model does) or use the plain LoraLinear path")
    return b if b.dtype == dtype else b.to(dtype)


def _lora_forward(x, base, A, B, s):
    """y = x W^T (+ bias) + s (x A^T) B^T; returns (y, xA) with xA = x A^T (N, r) saved for dB."""
    W = dense_weight(base, x.dtype)
    bias = _bias(base, x.dtype)
    y = torch.addmm(bias, x, W.T) if bias is not None else x @ W.T  # (N, out)
    del W  # a dequantized 4-bit weight is freed here, before the next projection dequantizes its own
    xA = x @ A.T  # (N, r)
    y.addmm_(xA, B.T, alpha=s)  # the low-rank update added in place: no second (N, out) buffer
    return y, xA


def _lora_backward(dy, x, xA, base, A, B, s, dx):
    """Add this projection's share of dx (N, in) into `dx` in place (or start it when dx is None); return dA, dB."""
    dyB = dy @ B  # (N, r)
    dA = _scaled(dyB.T @ x, s)  # (r, in)
    dB = _scaled(dy.T @ xA, s)  # (out, r)
    W = dense_weight(base, dy.dtype)  # dequantized again, just in time
    if dx is None:
        dx = dy @ W  # (N, in)
    else:
        dx.addmm_(dy, W)
    del W
    dx.addmm_(dyB, A, alpha=s)
    return dx, dA, dB


def _scaled(t: torch.Tensor, s: float) -> torch.Tensor:
    """t * s in place; skipped when s == 1 (lora_alpha == r), where it would change nothing but cost a launch."""
    return t if s == 1 else t.mul_(s)


def _as_compute(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# The SwiGLU step: forward shared with kernels/swiglu.py; the MLP backward's three-output variant, in place
# ---------------------------------------------------------------------------------------------------------------
def swiglu_forward(e: torch.Tensor, g: torch.Tensor, use_kernel: bool) -> torch.Tensor:
    """h = silu(e) g: the SwiGLU forward kernel of `minilora.kernels.swiglu`, or PyTorch ops (also for float64)."""
    if use_kernel:
        return glu_forward(e, g, SILU)
    ct = torch.promote_types(e.dtype, torch.float32)
    return (torch.nn.functional.silu(e.to(ct)) * g.to(ct)).to(e.dtype)


@triton.jit
def _swiglu_backward_inplace_kernel(dh_ptr, e_ptr, g_ptr, n_elements, BLOCK: tl.constexpr):
    """Read dh, e (gate), g (up); write h → dh's memory, de → e's memory, dg → g's memory.

    h = silu(e) g;   dg = dh silu(e);   de = dh g σ(e) (1 + e (1 − σ(e)))
    """
    # 1. this program's block of the flat arrays (int64 offsets: n can pass 2**31)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    # 2. load in the storage dtype, compute in fp32
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(e)
    silu = e * sig
    # 3. overwrite the three inputs with the three results (each element is read before it is written)
    tl.store(dh_ptr + offs, (silu * g).to(dh_ptr.dtype.element_ty), mask=mask)
    tl.store(e_ptr + offs, (dh * g * sig * (1.0 + e * (1.0 - sig))).to(e_ptr.dtype.element_ty), mask=mask)
    tl.store(g_ptr + offs, (dh * silu).to(g_ptr.dtype.element_ty), mask=mask)


def swiglu_backward_inplace(dh: torch.Tensor, e: torch.Tensor, g: torch.Tensor, use_kernel: bool):
    """Returns (h, de, dg), stored in the buffers of (dh, e, g): no new (N, I) tensors."""
    if use_kernel:
        n = dh.numel()
        block = 1024 if interpreter_on() else 2048
        _swiglu_backward_inplace_kernel[(triton.cdiv(n, block),)](dh, e, g, n, BLOCK=block, num_warps=8)
        return dh, e, g
    # the same arithmetic with PyTorch ops (fp32 or fp64 temporaries); all three results are computed before any
    # buffer is overwritten (for fp32 inputs .to(fp32) returns the very same tensor)
    ct = torch.promote_types(e.dtype, torch.float32)
    ef, gf, dhf = e.to(ct), g.to(ct), dh.to(ct)
    sig = torch.sigmoid(ef)
    silu = ef * sig
    h, de, dg = silu * gf, dhf * gf * sig * (1.0 + ef * (1.0 - sig)), dhf * silu
    dh.copy_(h)
    e.copy_(de)
    g.copy_(dg)
    return dh, e, g


def _use_kernel(x: torch.Tensor) -> bool:
    from .. import ops  # late import: ops imports the kernel files
    return x.dtype in (torch.float32, torch.float16, torch.bfloat16) and ops.use_triton(x)  # float64: PyTorch


# ---------------------------------------------------------------------------------------------------------------
# The autograd Functions
# ---------------------------------------------------------------------------------------------------------------
class LoRA_MLP(torch.autograd.Function):
    """out = down(silu(gate(x)) * up(x)), each projection a LoRA projection; x (N, C) → (N, C)."""

    @staticmethod
    def forward(ctx, x, gate_base, gate_A, gate_B, gate_s, up_base, up_A, up_B, up_s,
                down_base, down_A, down_B, down_s):
        dt = x.dtype
        gA, gB, uA, uB, dA_, dB_ = (_as_compute(t, dt) for t in (gate_A, gate_B, up_A, up_B, down_A, down_B))
        e, xAg = _lora_forward(x, gate_base, gA, gB, gate_s)  # (N, I)
        g, xAu = _lora_forward(x, up_base, uA, uB, up_s)  # (N, I)
        h = swiglu_forward(e, g, _use_kernel(x))  # (N, I); not saved: the backward recomputes it from e and g
        out, hAd = _lora_forward(h, down_base, dA_, dB_, down_s)  # (N, C)
        # the A/B copies in the compute dtype are saved (a few r × features values each) so the backward does not
        # cast them again; when the dtypes already match they are the parameters themselves
        ctx.save_for_backward(x, e, g, xAg, xAu, hAd, gA, gB, uA, uB, dA_, dB_)
        ctx.param_dtypes = tuple(t.dtype for t in (gate_A, gate_B, up_A, up_B, down_A, down_B))
        ctx.bases, ctx.scales, ctx.used = (gate_base, up_base, down_base), (gate_s, up_s, down_s), False
        return out

    @staticmethod
    def backward(ctx, d_out):
        if ctx.used:
            raise RuntimeError("LoRA_MLP's backward reuses its saved buffers in place and can run only once: "
                               "don't use retain_graph=True with the fast LoRA path (use_kernels('reference'))")
        ctx.used = True
        x, e, g, xAg, xAu, hAd, gA, gB, uA, uB, dA_, dB_ = ctx.saved_tensors  # A/B already in x's dtype
        gate_base, up_base, down_base = ctx.bases
        gs, us, ds = ctx.scales
        dt = x.dtype
        d_out = d_out.contiguous()

        # down projection: dh = d_out Wd + s (d_out Bd) Ad — the only new (N, I) buffer of the backward
        doutB = d_out @ dB_  # (N, r)
        d_down_B = _scaled(d_out.T @ hAd, ds)  # (C, r)
        Wd = dense_weight(down_base, dt)
        dh = d_out @ Wd  # (N, I)
        del Wd
        dh.addmm_(doutB, dA_, alpha=ds)
        # SwiGLU: h, de, dg overwrite dh, e, g
        h, de, dg = swiglu_backward_inplace(dh, e, g, _use_kernel(x))
        # dA_down needs h = silu(e) up, recomputed above rather than stored through the forward
        d_down_A = _scaled(doutB.T @ h, ds)  # (r, I)
        # gate and up: both add into one dx buffer
        dx, d_up_A, d_up_B = _lora_backward(dg, x, xAu, up_base, uA, uB, us, None)
        dx, d_gate_A, d_gate_B = _lora_backward(de, x, xAg, gate_base, gA, gB, gs, dx)
        grads = [d.to(pdt) for d, pdt in zip((d_gate_A, d_gate_B, d_up_A, d_up_B, d_down_A, d_down_B),
                                             ctx.param_dtypes)]
        return (dx, None, grads[0], grads[1], None, None, grads[2], grads[3], None,
                None, grads[4], grads[5], None)


class _LoRA_Projections(torch.autograd.Function):
    """Several LoRA projections of the same input x: (base, A, B, s) per projection; returns one output each."""

    @staticmethod
    def forward(ctx, x, *params):
        groups = [params[i:i + 4] for i in range(0, len(params), 4)]
        outs, xAs, ABs = [], [], []
        for base, A, B, s in groups:
            Ac, Bc = _as_compute(A, x.dtype), _as_compute(B, x.dtype)
            y, xA = _lora_forward(x, base, Ac, Bc, s)
            outs.append(y)
            xAs.append(xA)
            ABs += (Ac, Bc)
        # A/B are saved in the compute dtype (tiny) so the backward does not cast them again
        ctx.save_for_backward(x, *xAs, *ABs)
        ctx.param_dtypes = [(A.dtype, B.dtype) for _, A, B, _ in groups]
        ctx.bases = [base for base, *_ in groups]
        ctx.scales = [s for *_, s in groups]
        return tuple(outs)

    @staticmethod
    def backward(ctx, *d_outs):
        n = len(ctx.bases)
        x, *rest = ctx.saved_tensors
        xAs, AB = rest[:n], rest[n:]
        dx, grads = None, []
        for i, dy in enumerate(d_outs):
            A, B = AB[2 * i], AB[2 * i + 1]
            if dy is None:  # this output was not used: no gradient flows through it
                grads += [None, None, None, None]
                continue
            dx, dA, dB = _lora_backward(dy.contiguous(), x, xAs[i], ctx.bases[i], A, B, ctx.scales[i], dx)
            A_dtype, B_dtype = ctx.param_dtypes[i]
            grads += [None, dA.to(A_dtype), dB.to(B_dtype), None]
        if dx is None:
            dx = torch.zeros_like(x)
        return (dx, *grads)


class LoRA_QKV(_LoRA_Projections):
    """q, k, v = three LoRA projections of x, one backward: dx = dq Wq + dk Wk + dv Wv (+ low-rank terms)."""


class LoRA_O(_LoRA_Projections):
    """The attention output projection: one LoRA projection."""


# ---------------------------------------------------------------------------------------------------------------
# Entry points taking LoraLinear modules
# ---------------------------------------------------------------------------------------------------------------
def lora_params(layer: nn.Module):
    """(base_layer, A, B, scaling) of a LoraLinear, checked for the fast path."""
    from ..lora import LoraLinear
    if not isinstance(layer, LoraLinear):
        raise TypeError(f"fast LoRA needs LoraLinear layers, got {type(layer).__name__}")
    if not isinstance(layer.lora_dropout, nn.Identity):
        raise ValueError("fast LoRA needs lora_dropout=0 (dropout's random mask is not part of the hand-written "
                         "backward); use the plain LoraLinear forward")
    if layer.merged:
        raise ValueError("this LoraLinear is merged: call unmerge() before training with fast LoRA")
    return layer.base_layer, layer.lora_A.weight, layer.lora_B.weight, layer.scaling


def fast_lora_supported(*layers) -> bool:
    """True when every layer can take the fast path: LoraLinear, dropout 0, not merged, frozen base."""
    from ..lora import LoraLinear
    for layer in layers:
        if not isinstance(layer, LoraLinear) or layer.merged or not isinstance(layer.lora_dropout, nn.Identity):
            return False
        base = layer.base_layer
        # a leaf module's own parameter dict is all parameters() would visit, without its generator machinery
        params = base.parameters() if base._modules else base._parameters.values()
        if any(p is not None and p.requires_grad for p in params):
            return False
    return True


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"fast LoRA input has dtype {x.dtype}; use a floating-point activation")
    return x.reshape(-1, x.shape[-1])  # (N, C); a copy only when x is non-contiguous


def apply_lora_mlp(x: torch.Tensor, gate, up, down) -> torch.Tensor:
    """x (..., C) → down(silu(gate(x)) * up(x)) (..., C) through `LoRA_MLP`."""
    x2 = _flatten(x)
    out = LoRA_MLP.apply(x2, *lora_params(gate), *lora_params(up), *lora_params(down))
    return out.view(*x.shape[:-1], out.shape[-1])


def apply_lora_qkv(x: torch.Tensor, q_proj, k_proj, v_proj):
    """x (..., C) → (q, k, v), each (..., out_i), through `LoRA_QKV`."""
    x2 = _flatten(x)
    q, k, v = LoRA_QKV.apply(x2, *lora_params(q_proj), *lora_params(k_proj), *lora_params(v_proj))
    lead = x.shape[:-1]
    return q.view(*lead, -1), k.view(*lead, -1), v.view(*lead, -1)


def apply_lora_o(x: torch.Tensor, o_proj) -> torch.Tensor:
    x2 = _flatten(x)
    (y,) = LoRA_O.apply(x2, *lora_params(o_proj))
    return y.view(*x.shape[:-1], -1)

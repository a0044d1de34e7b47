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

Everything here takes tensors: per projection a `LoraWeights` (the frozen base weight — a dense tensor, or the
`NF4State` of a 4-bit weight, dequantized just in time —, its bias, A, B and the scale s), never modules. Which
layers qualify (LoRA dropout 0, not merged, frozen base) is decided where the modules live: `minilora.lora`; whether
the Triton kernels run is decided by `minilora.ops` and arrives here as ``use_kernel``: True/False for all of
them, or a `Kernels` pair that sets the dequantization and the SwiGLU step apart (the benchmark's ablation).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..quant.blockwise import NF4State, dequantize_nf4_reference
from ._triton import interpreter_on, tl, triton
from .nf4_dequant import dequantize_nf4_triton
from .swiglu import SILU, glu_forward


class Kernels(NamedTuple):
    """Which steps of the fast-LoRA Functions run as Triton kernels (False: the same arithmetic in PyTorch ops)."""
    dequant: bool  # the NF4 base weight, dequantized just in time
    glu: bool  # the MLP's SwiGLU forward and its in-place backward


class LoraWeights(NamedTuple):
    """One LoRA projection as tensors: y = x W^T (+ bias) + scaling (x A^T) B^T."""
    weight: torch.Tensor | NF4State  # (out, in) dense, or a 4-bit weight's quantization state
    bias: torch.Tensor | None  # frozen
    A: torch.Tensor  # (r, in), trained
    B: torch.Tensor  # (out, r), trained
    scaling: float


# ---------------------------------------------------------------------------------------------------------------
# The frozen base weight: 16-bit, or 4-bit dequantized just in time
# ---------------------------------------------------------------------------------------------------------------
def base_weight(weight: torch.Tensor | NF4State, dtype: torch.dtype, use_kernel: bool) -> torch.Tensor:
    """The frozen (out, in) weight as a dense `dtype` tensor: a 4-bit state is dequantized now (and dropped by the
    caller right after its matmul); a dense weight is used as is (no copy when the dtype already matches)."""
    if isinstance(weight, NF4State):
        return dequantize_nf4_triton(weight, dtype) if use_kernel else dequantize_nf4_reference(weight, dtype)
    return weight if weight.dtype == dtype else weight.to(dtype)


def _bias(bias, dtype):
    return None if bias is None else (bias if bias.dtype == dtype else bias.to(dtype))


def _lora_forward(x, base, A, B, s, use_kernel):
    """y = x W^T (+ bias) + s (x A^T) B^T; returns (y, xA) with xA = x A^T (N, r) saved for dB."""
    weight, bias = base
    W = base_weight(weight, x.dtype, use_kernel)
    bias = _bias(bias, x.dtype)
    y = torch.addmm(bias, x, W.T) if bias is not None else x @ W.T  # (N, out)
    del W  # a dequantized 4-bit weight is freed here, before the next projection dequantizes its own
    xA = x @ A.T  # (N, r)
    y.addmm_(xA, B.T, alpha=s)  # the low-rank update added in place: no second (N, out) buffer
    return y, xA


def _lora_backward(dy, x, xA, base, A, B, s, dx, use_kernel):
    """Add this projection's share of dx (N, in) into `dx` in place (or start it when dx is None); return dA, dB."""
    dyB = dy @ B  # (N, r)
    dA = _scaled(dyB.T @ x, s)  # (r, in)
    dB = _scaled(dy.T @ xA, s)  # (out, r)
    W = base_weight(base[0], dy.dtype, use_kernel)  # dequantized again, just in time
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


# ---------------------------------------------------------------------------------------------------------------
# The autograd Functions
# ---------------------------------------------------------------------------------------------------------------
class LoRA_MLP(torch.autograd.Function):
    """out = down(silu(gate(x)) * up(x)), each projection a LoRA projection; x (N, C) → (N, C).

    Arguments per projection: base = (weight or NF4State, bias) — frozen, not a tensor autograd tracks —, A, B, s.
    """

    @staticmethod
    def forward(ctx, x, use_kernel, gate_base, gate_A, gate_B, gate_s, up_base, up_A, up_B, up_s,
                down_base, down_A, down_B, down_s):
        dt = x.dtype
        gA, gB, uA, uB, dA_, dB_ = (_as_compute(t, dt) for t in (gate_A, gate_B, up_A, up_B, down_A, down_B))
        use_kernel = as_kernels(use_kernel)
        deq = use_kernel.dequant
        e, xAg = _lora_forward(x, gate_base, gA, gB, gate_s, deq)  # (N, I)
        g, xAu = _lora_forward(x, up_base, uA, uB, up_s, deq)  # (N, I)
        h = swiglu_forward(e, g, use_kernel.glu)  # (N, I); not saved: the backward recomputes it from e and g
        out, hAd = _lora_forward(h, down_base, dA_, dB_, down_s, deq)  # (N, C)
        # the A/B copies in the compute dtype are saved (a few r × features values each) so the backward does not
        # cast them again; when the dtypes already match they are the parameters themselves
        ctx.save_for_backward(x, e, g, xAg, xAu, hAd, gA, gB, uA, uB, dA_, dB_)
        ctx.param_dtypes = tuple(t.dtype for t in (gate_A, gate_B, up_A, up_B, down_A, down_B))
        ctx.bases, ctx.scales, ctx.used = (gate_base, up_base, down_base), (gate_s, up_s, down_s), False
        ctx.use_kernel = use_kernel
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
        dt, deq, glu = x.dtype, ctx.use_kernel.dequant, ctx.use_kernel.glu
        d_out = d_out.contiguous()

        # down projection: dh = d_out Wd + s (d_out Bd) Ad — the only new (N, I) buffer of the backward
        doutB = d_out @ dB_  # (N, r)
        d_down_B = _scaled(d_out.T @ hAd, ds)  # (C, r)
        Wd = base_weight(down_base[0], dt, deq)
        dh = d_out @ Wd  # (N, I)
        del Wd
        dh.addmm_(doutB, dA_, alpha=ds)
        # SwiGLU: h, de, dg overwrite dh, e, g
        h, de, dg = swiglu_backward_inplace(dh, e, g, glu)
        # dA_down needs h = silu(e) up, recomputed above rather than stored through the forward
        d_down_A = _scaled(doutB.T @ h, ds)  # (r, I)
        # gate and up: both add into one dx buffer
        dx, d_up_A, d_up_B = _lora_backward(dg, x, xAu, up_base, uA, uB, us, None, deq)
        dx, d_gate_A, d_gate_B = _lora_backward(de, x, xAg, gate_base, gA, gB, gs, dx, deq)
        grads = [d.to(pdt) for d, pdt in zip((d_gate_A, d_gate_B, d_up_A, d_up_B, d_down_A, d_down_B),
                                             ctx.param_dtypes)]
        return (dx, None, None, grads[0], grads[1], None, None, grads[2], grads[3], None,
                None, grads[4], grads[5], None)


class _LoRA_Projections(torch.autograd.Function):
    """Several LoRA projections of the same input x: (base, A, B, s) per projection; returns one output each."""

    @staticmethod
    def forward(ctx, x, use_kernel, *params):
        use_kernel = as_kernels(use_kernel)
        groups = [params[i:i + 4] for i in range(0, len(params), 4)]
        outs, xAs, ABs = [], [], []
        for base, A, B, s in groups:
            Ac, Bc = _as_compute(A, x.dtype), _as_compute(B, x.dtype)
            y, xA = _lora_forward(x, base, Ac, Bc, s, use_kernel.dequant)
            outs.append(y)
            xAs.append(xA)
            ABs += (Ac, Bc)
        # A/B are saved in the compute dtype (tiny) so the backward does not cast them again
        ctx.save_for_backward(x, *xAs, *ABs)
        ctx.param_dtypes = [(A.dtype, B.dtype) for _, A, B, _ in groups]
        ctx.bases = [base for base, *_ in groups]
        ctx.scales = [s for *_, s in groups]
        ctx.use_kernel = use_kernel
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
            dx, dA, dB = _lora_backward(dy.contiguous(), x, xAs[i], ctx.bases[i], A, B, ctx.scales[i], dx,
                                        ctx.use_kernel.dequant)
            A_dtype, B_dtype = ctx.param_dtypes[i]
            grads += [None, dA.to(A_dtype), dB.to(B_dtype), None]
        if dx is None:
            dx = torch.zeros_like(x)
        return (dx, None, *grads)


class LoRA_QKV(_LoRA_Projections):
    """q, k, v = three LoRA projections of x, one backward: dx = dq Wq + dk Wk + dv Wv (+ low-rank terms)."""


class LoRA_O(_LoRA_Projections):
    """The attention output projection: one LoRA projection."""


# ---------------------------------------------------------------------------------------------------------------
# Entry points: x (..., C) and one `LoraWeights` per projection
# ---------------------------------------------------------------------------------------------------------------
def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"fast LoRA input has dtype {x.dtype}; use a floating-point activation")
    return x.reshape(-1, x.shape[-1])  # (N, C); a copy only when x is non-contiguous


def _args(w: LoraWeights) -> tuple:
    if not isinstance(w, LoraWeights):
        raise TypeError(f"fast LoRA takes LoraWeights per projection (minilora.lora.lora_weights(layer) builds "
                        f"one from a LoraLinear), got {type(w).__name__}")
    return (w.weight, w.bias), w.A, w.B, w.scaling


def as_kernels(use_kernel: bool | Kernels) -> Kernels:
    return use_kernel if isinstance(use_kernel, Kernels) else Kernels(bool(use_kernel), bool(use_kernel))


def _use_kernel(x: torch.Tensor, use_kernel) -> Kernels:
    if x.dtype == torch.float64:  # float64 (gradcheck): the PyTorch ops of each step
        return Kernels(False, False)
    return as_kernels(use_kernel)


def apply_lora_mlp(x: torch.Tensor, gate: LoraWeights, up: LoraWeights, down: LoraWeights,
                   use_kernel: bool | Kernels = True) -> torch.Tensor:
    """x (..., C) → down(silu(gate(x)) * up(x)) (..., C) through `LoRA_MLP`."""
    x2 = _flatten(x)
    out = LoRA_MLP.apply(x2, _use_kernel(x, use_kernel), *_args(gate), *_args(up), *_args(down))
    return out.view(*x.shape[:-1], out.shape[-1])


def apply_lora_projections(x: torch.Tensor, *projections: LoraWeights, use_kernel: bool | Kernels = True) -> tuple:
    """x (..., C) → one output (..., out_i) per projection through one Function: `LoRA_QKV` for q/k/v (one
    backward, one dx buffer), `LoRA_O` for a single projection."""
    x2 = _flatten(x)
    fn = LoRA_O if len(projections) == 1 else LoRA_QKV
    outs = fn.apply(x2, _use_kernel(x, use_kernel), *(a for w in projections for a in _args(w)))
    lead = x.shape[:-1]
    return tuple(y.view(*lead, -1) for y in outs)

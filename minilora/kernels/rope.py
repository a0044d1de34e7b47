"""Rotary position embedding (RoPE), rotate-half layout.

Shapes: q (B, n_head, T, hd), k (B, n_kv_head, T, hd), cos/sin (B or 1, T, hd) or (T, hd) — the 2-D tables
transformers and Liger pass, shared by the whole batch. `check_rope` is the one validation of both paths.

Rotate-half pairs element i with element i + hd/2 of the same head:
$x' = x \\cos\\theta + \\mathrm{rotate\\_half}(x) \\sin\\theta$ with $\\mathrm{rotate\\_half}([x_1, x_2]) = [-x_2, x_1]$.
The backward of a rotation by θ is the rotation by −θ (same cos, negated sin).

The Triton version rotates q and k in one launch. Program (t_block, b, head_group) loads the cos/sin rows of its
BLOCK_T positions once and reuses them for its BLOCK_H heads (of q, or of k), all in one (BLOCK_H, BLOCK_T, hd/2)
tile so that many loads are in flight at once. q and k may have any strides (the model passes transposed views of the projections, strides
(T·H·hd, hd, H·hd, 1)); outputs get the same layout. Position ids are explicit: cos/sin carry one row per (batch,
position) when their first dimension is B — packed sequences restart their positions inside a row — or one table
shared by the batch when it is 1 (stride 0 over the batch).

Split a head into halves x = [x1, x2] and cos = [c1, c2], sin = [s1, s2] (c1 = c2, s1 = s2 for real RoPE tables):

    forward    y1 = x1 c1 − x2 s1          y2 = x2 c2 + x1 s2
    backward   dx1 = dy1 c1 + dy2 s2       dx2 = dy2 c2 − dy1 s1      (the transpose: rotation by −θ)
"""
from __future__ import annotations

import torch

from ._triton import check_same, check_tensor, interpreter_on, tl, triton
from .checks import check_float, check_same_device


def check_rope(q, k, cos, sin):
    """The checks both paths make; returns (cos, sin) as (B or 1, T, hd) (a 2-D (T, hd) table gains a batch dim)."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_float(name, t)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be 4-D (B, heads, T, head_dim), got {tuple(q.shape)} and {tuple(k.shape)}")
    check_same("q and k", q, k, shape=False)
    B, _, T, hd = q.shape
    if k.shape[0] != B or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, length and head_dim")
    if hd % 2:
        raise ValueError(f"head_dim must be even for rotate-half RoPE, got {hd}")
    check_same("cos and sin", cos, sin)
    if cos.dim() == 2:  # (T, hd): one table for every sequence of the batch
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    if cos.dim() != 3 or cos.shape[0] not in (1, B) or cos.shape[1:] != (T, hd):
        raise ValueError(f"cos/sin must have shape (B or 1, T, head_dim) = ({B} or 1, {T}, {hd}) or (T, head_dim), "
                         f"got {tuple(cos.shape)}")
    if cos.dtype != q.dtype:
        raise TypeError(f"cos/sin have dtype {cos.dtype} but q has {q.dtype}: cast the tables with .to(q.dtype) "
                        "(the output would otherwise be promoted to another dtype)")
    check_same_device("q and cos/sin", q, cos)
    return cos, sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Plain PyTorch RoPE: reads q, k, cos, sin and writes several temporaries of q's size."""
    cos, sin = check_rope(q, k, cos, sin)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
    q_out = q * cos + rotate_half(q) * sin
    k_out = k * cos + rotate_half(k) * sin
    return q_out, k_out


@triton.jit
def _rotate_heads(x_ptr, y_ptr, sx_b, sx_h, sx_t, sx_d, sy_b, sy_h, sy_t, sy_d, b, h_offs, n_heads, t_offs, d_offs,
                  seq_len, c1, c2, s1, s2, HALF: tl.constexpr, BACKWARD: tl.constexpr):
    """Rotate a (BLOCK_H, BLOCK_T, hd) tile — BLOCK_H heads at once, so many loads are in flight together."""
    h3 = h_offs[:, None, None]  # (BLOCK_H, 1, 1)
    t3 = t_offs[None, :, None]  # (1, BLOCK_T, 1)
    d3 = d_offs[None, None, :]  # (1, 1, BLOCK_HALF)
    mask = (h3 < n_heads) & (t3 < seq_len) & (d3 < HALF)
    x_tile = x_ptr + b * sx_b + h3 * sx_h + t3 * sx_t  # int64 offsets: b, h, t offsets are int64
    y_tile = y_ptr + b * sy_b + h3 * sy_h + t3 * sy_t
    x1 = tl.load(x_tile + d3 * sx_d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_tile + (d3 + HALF) * sx_d, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # transpose of the rotation = rotation by −θ
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    tl.store(y_tile + d3 * sy_d, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_tile + (d3 + HALF) * sy_d, y2.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr,
                 sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
                 sqo_b, sqo_h, sqo_t, sqo_d, sko_b, sko_h, sko_t, sko_d,
                 sc_b, sc_t, sc_d,
                 n_q_heads, n_k_heads, seq_len,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr,
                 BACKWARD: tl.constexpr):
    # q: (B, n_q_heads, T, hd), k: (B, n_k_heads, T, hd), any strides (s*_b, s*_h, s*_t, s*_d).
    # cos, sin: (B or 1, T, hd) sharing strides (sc_b = 0 when one table serves the whole batch).
    # Grid: (T / BLOCK_T, B, head groups of q then of k). Program (i, b, g) rotates BLOCK_H heads x BLOCK_T positions.
    # The outputs may be the inputs themselves (in place): every element is read before it is written and each
    # element belongs to exactly one program.
    # 1. Which positions and which heads.
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    group = tl.program_id(2)
    t_offs = (pid_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    d_offs = tl.arange(0, BLOCK_HALF)
    # 2. Load the cos/sin halves of these positions, (1, BLOCK_T, BLOCK_HALF): shared by all BLOCK_H heads.
    cs = b * sc_b + t_offs[None, :, None] * sc_t + d_offs[None, None, :] * sc_d
    cmask = (t_offs[None, :, None] < seq_len) & (d_offs[None, None, :] < HALF)
    c1 = tl.load(cos_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + cs + HALF * sc_d, mask=cmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + cs + HALF * sc_d, mask=cmask, other=0.0).to(tl.float32)
    # 3. The first groups are query heads, the rest key heads (fp32 math, cast on store).
    n_q_groups = tl.cdiv(n_q_heads, BLOCK_H)
    if group < n_q_groups:
        h_offs = (group * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        _rotate_heads(q_ptr, q_out_ptr, sq_b, sq_h, sq_t, sq_d, sqo_b, sqo_h, sqo_t, sqo_d, b, h_offs, n_q_heads,
                      t_offs, d_offs, seq_len, c1, c2, s1, s2, HALF, BACKWARD)
    else:
        h_offs = ((group - n_q_groups) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        _rotate_heads(k_ptr, k_out_ptr, sk_b, sk_h, sk_t, sk_d, sko_b, sko_h, sko_t, sko_d, b, h_offs, n_k_heads,
                      t_offs, d_offs, seq_len, c1, c2, s1, s2, HALF, BACKWARD)


# Liger-style names for the two directions: one kernel, the BACKWARD flag picks the sign of θ.
_rope_forward_kernel = _rope_kernel
_rope_backward_kernel = _rope_kernel


def _check_inputs(q, k, cos, sin) -> None:
    """What the Triton path needs beyond `check_rope`: supported dtypes and devices, cos and sin laid out alike."""
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_tensor(name, t, contiguous=False)  # any strides are handled
    if cos.stride() != sin.stride():
        raise ValueError("cos and sin must share strides (build both the same way, or call .contiguous() on both)")


# Launch settings; None = the default heuristic. The benchmark script sweeps these on a GPU.
TUNING = {"block_h": None, "block_t": None, "num_warps": None}


def _launch(q, k, q_out, k_out, cos, sin, backward: bool):
    B, n_q, T, hd = q.shape
    n_k = k.shape[1]
    if q.numel() == 0 and k.numel() == 0:
        return
    half = hd // 2
    block_half = triton.next_power_of_2(half)
    if interpreter_on():
        # The interpreter pays per operation, not per element: few, big tiles run fastest there.
        block_h, block_t, warps = triton.next_power_of_2(max(n_q, n_k)), max(1, 4096 // block_half), 4
    else:  # GPU: tiles of about 4096 pairs, several heads deep, so each program has many loads in flight
        block_h = TUNING["block_h"] or 4
        block_t = TUNING["block_t"] or max(1, 1024 // block_half)
        warps = TUNING["num_warps"] or 4
    block_h = min(block_h, triton.next_power_of_2(max(n_q, n_k)))
    block_t = min(block_t, triton.next_power_of_2(T))
    sc_b = 0 if cos.shape[0] == 1 else cos.stride(0)
    grid = (triton.cdiv(T, block_t), B, triton.cdiv(n_q, block_h) + triton.cdiv(n_k, block_h))
    _rope_kernel[grid](q, k, q_out, k_out, cos, sin, *q.stride(), *k.stride(), *q_out.stride(), *k_out.stride(),
                       sc_b, cos.stride(1), cos.stride(2), n_q, n_k, T, HALF=half, BLOCK_H=block_h,
                       BLOCK_T=block_t, BLOCK_HALF=block_half, BACKWARD=backward, num_warps=warps)


def rope_forward(q, k, cos, sin, inplace: bool = False):
    """(q_rot, k_rot). inplace=True overwrites q and k and returns them."""
    cos, sin = check_rope(q, k, cos, sin)
    _check_inputs(q, k, cos, sin)
    q_out, k_out = (q, k) if inplace else (torch.empty_like(q), torch.empty_like(k))
    _launch(q, k, q_out, k_out, cos, sin, backward=False)
    return q_out, k_out


def rope_backward(dq, dk, cos, sin, inplace: bool = False):
    """(dq, dk) rotated by −θ. inplace=True overwrites the incoming gradients."""
    dq_out, dk_out = (dq, dk) if inplace else (torch.empty_like(dq), torch.empty_like(dk))
    _launch(dq, dk, dq_out, dk_out, cos, sin, backward=True)
    return dq_out, dk_out


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, inplace: bool):
        q_out, k_out = rope_forward(q, k, cos, sin, inplace=inplace)
        if inplace:
            ctx.mark_dirty(q, k)
        ctx.save_for_backward(cos, sin)
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        # (autograd hands zeros, not None, for an output that was not used: materialize_grads is on by default)
        dq, dk = rope_backward(dq, dk, cos, sin)
        return dq, dk, None, None, None


def rope_fast(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inplace: bool = False):
    """Triton RoPE for q (B, n_head, T, hd) and k (B, n_kv, T, hd) in one launch; cos/sin (B or 1, T, hd) or
    (T, hd) of q's dtype; q and k may have any strides (outputs keep them).

    inplace=True rotates q and k in their own memory and returns them. Autograd allows that only for tensors that
    are neither leaves requiring grad nor views of another tensor (a Function returning two outputs cannot mark a
    view dirty): with autograd on, pass q and k that own their memory, or keep inplace=False.
    """
    if inplace and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad) and (q._is_view() or k._is_view()):
        raise ValueError("rope_fast(inplace=True) got a view (e.g. a transposed projection) that requires grad; "
                         "autograd cannot rotate views in place in a two-output Function: use inplace=False, or "
                         "pass tensors that own their memory")
    cos, sin = check_rope(q, k, cos, sin)
    return RopeFunction.apply(q, k, cos, sin, inplace)

"""RMSNorm: $y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\cdot w$.

Shapes: x (..., hidden), weight (hidden,). Like Llama, the statistics are computed in fp32 and the normalized
activations are cast back to the input dtype *before* the multiplication by the weight.

The Triton version sees x as (n_rows, hidden), contiguous (row stride = hidden):

    forward   one program per tile of ROWS rows: reads x, writes y and one fp32 number per row, r = 1/rms(x)
    backward  a fixed number of programs, each owning a run of rows (taken ROWS at a time, so several rows' loads
              are in flight together): reads dy, x, r, writes dx and,
              when the weight is trainable, one fp32 partial sum of dy * x̂ per program -> (n_programs, hidden),
              summed by PyTorch at the end (a tiny tensor next to x).

With x̂ = x r (the normalized row) and g = dy * w, the backward of y = w x̂ is
$dx = r\\,(g - \\hat{x}\\,\\mathrm{mean}(g\\,\\hat{x}))$ and $dw = \\sum_{\\text{rows}} dy\\,\\hat{x}$.
Storing r (4 bytes per row) instead of x̂ (hidden numbers per row) is what keeps the saved state small.
"""
from __future__ import annotations

import torch

from ._triton import check_tensor, interpreter_on, num_programs_hint, tl, triton
from .checks import check_float, check_positive, check_same_device


def check_rms_norm(x, weight, eps) -> None:
    """The checks both paths make: x (..., hidden), weight (hidden,) of x's dtype or fp32, eps a finite number > 0."""
    check_float("x", x)
    check_float("weight", weight)
    if x.dim() == 0 or weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight must have shape (hidden,) = ({x.shape[-1] if x.dim() else '?'},) to match x "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"weight dtype {weight.dtype} must equal x's ({x.dtype}) or be float32")
    check_same_device("x and weight", x, weight)
    check_positive("eps", eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    check_rms_norm(x, weight, eps)
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 for 16-bit inputs; float64 stays float64
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)


MAX_HIDDEN = 65536  # one row must fit in one block of registers
# Launch settings; None = the default heuristic. The benchmark script sweeps these on a GPU.
TUNING = {"num_warps": None, "programs_per_sm": 4, "rows": None}


@triton.jit
def _rms_norm_forward_kernel(x_ptr, w_ptr, y_ptr, r_ptr, n_rows, n_cols, eps, ROWS: tl.constexpr,
                             BLOCK: tl.constexpr):
    # x, y: (n_rows, n_cols) contiguous; w: (n_cols,); r: (n_rows,) fp32. One program = ROWS rows, a (ROWS, BLOCK) tile.
    # 1. Point at these rows (int64: n_rows * n_cols may pass 2**31).
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # 2. r = 1 / sqrt(mean(x²) + eps) per row, in fp32; masked lanes are 0 and add nothing to the sum.
    r = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    tl.store(r_ptr + rows, r, mask=rows < n_rows)
    # 3. Same rounding as the reference: normalize in fp32, round to x's dtype, then multiply by the weight.
    x_hat = (x * r[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (x_hat * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(dy_ptr, x_ptr, w_ptr, r_ptr, dx_ptr, dw_partial_ptr, n_rows, n_cols, rows_per_program,
                              ROWS: tl.constexpr, BLOCK: tl.constexpr, COMPUTE_DW: tl.constexpr):
    # dy, x, dx: (n_rows, n_cols) contiguous; r: (n_rows,); dw_partial: (n_programs, n_cols) fp32.
    # 1. This program owns rows [first, first + rows_per_program), taken ROWS at a time (rows_per_program is a
    #    multiple of ROWS).
    pid = tl.program_id(0).to(tl.int64)  # int64 so that row * n_cols below cannot overflow
    first = pid * rows_per_program
    cols = tl.arange(0, BLOCK)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, rows_per_program, ROWS):
        rows = first + start + tl.arange(0, ROWS)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows[:, None] * n_cols + cols[None, :]
        # 2. Reload x and the saved r; rebuild x̂ (cheaper than having stored it).
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + rows, mask=row_mask, other=0.0)
        x_hat = x * r[:, None]
        # 3. dx = r (g − x̂ mean(g x̂)) with g = dy w, per row.
        g = dy * w[None, :]
        dx = r[:, None] * (g - x_hat * (tl.sum(g * x_hat, axis=1) / n_cols)[:, None])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        # 4. dw gets dy times the *rounded* x̂, exactly what multiplied w in the forward (masked rows add 0).
        if COMPUTE_DW:
            dw_acc += tl.sum(dy * x_hat.to(x_ptr.dtype.element_ty).to(tl.float32), axis=0)
    # 5. One partial row of dw per program; the launcher sums them.
    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * n_cols + cols, dw_acc, mask=col_mask)


def _launch_config(n_cols: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n_cols)
    return block, TUNING["num_warps"] or (4 if block <= 1024 else 8 if block <= 8192 else 16)


def _rows_per_tile(n_cols: int, block: int) -> int:
    """Rows per tile: about 8192 elements per tile on a GPU (several rows when rows are short)."""
    if TUNING["rows"] is not None:
        return TUNING["rows"]
    return max(1, min(16, (16384 if interpreter_on() else 8192) // block))


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    check_rms_norm(x, weight, eps)
    check_tensor("x", x)  # what only the kernel needs: a supported dtype and device, contiguous rows
    check_tensor("weight", weight)
    if x.shape[-1] > MAX_HIDDEN:
        raise ValueError(f"hidden size {x.shape[-1]} is larger than the kernel's one-block limit {MAX_HIDDEN}; "
                         "use rms_norm_reference")


def rms_norm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """(y, r): y like the reference (dtype promote(x, weight)), r = 1/rms per row, fp32 (n_rows,)."""
    _check_inputs(x, weight, eps)
    n_cols = x.shape[-1]
    x2 = x.view(-1, n_cols)
    n_rows = x2.shape[0]
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    r = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows > 0:
        block, warps = _launch_config(n_cols)
        rows = _rows_per_tile(n_cols, block)
        _rms_norm_forward_kernel[(triton.cdiv(n_rows, rows),)](x2, weight, y, r, n_rows, n_cols, eps, ROWS=rows,
                                                               BLOCK=block, num_warps=warps)
    return y, r


def rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor,
                      compute_dw: bool = True, programs_per_sm: int | None = None):
    """(dx, dw or None). dx has x's dtype, dw weight's dtype (summed in fp32 first)."""
    n_cols = x.shape[-1]
    x2, dy2 = x.view(-1, n_cols), dy.contiguous().view(-1, n_cols)
    n_rows = x2.shape[0]
    dx = torch.empty_like(x)
    programs_per_sm = programs_per_sm or TUNING["programs_per_sm"]
    block, warps = _launch_config(n_cols)
    rows = _rows_per_tile(n_cols, block)
    n_programs = max(1, min(n_rows, num_programs_hint(x.device) * (1 if interpreter_on() else programs_per_sm)))
    rows_per_program = triton.cdiv(triton.cdiv(max(n_rows, 1), n_programs), rows) * rows  # a multiple of ROWS
    n_programs = triton.cdiv(max(n_rows, 1), rows_per_program)
    dw_partial = torch.empty((n_programs, n_cols) if compute_dw else (1,), dtype=torch.float32, device=x.device)
    if n_rows > 0:
        _rms_norm_backward_kernel[(n_programs,)](dy2, x2, weight, r, dx, dw_partial, n_rows, n_cols,
                                                 rows_per_program, ROWS=rows, BLOCK=block, COMPUTE_DW=compute_dw,
                                                 num_warps=warps)
    if not compute_dw:
        return dx, None
    dw = dw_partial.sum(0) if n_rows > 0 else torch.zeros(n_cols, dtype=torch.float32, device=x.device)
    return dx, dw.to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, r = rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, r = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy.to(torch.promote_types(x.dtype, weight.dtype)), x, weight, r,
                                   compute_dw=ctx.needs_input_grad[1])
        return (dx if ctx.needs_input_grad[0] else None), dw, None


def rms_norm_fast(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton RMSNorm. x (..., hidden) contiguous fp32/fp16/bf16; weight (hidden,) of x's dtype or fp32.
    The output dtype follows the reference (torch's type promotion of x's and weight's dtypes)."""
    _check_inputs(x, weight, eps)
    return RMSNormFunction.apply(x, weight, eps)

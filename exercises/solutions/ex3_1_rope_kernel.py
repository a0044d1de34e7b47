"""Exercise 3.1 — reference solution."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rope_rows_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, hd, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # 1. one row per program; mask the lanes past HALF
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    mask = d < HALF
    first, second = row * hd + d, row * hd + HALF + d
    # 2. load both halves of x, cos and sin, in fp32
    x1 = tl.load(x_ptr + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + second, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + first, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + second, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + first, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + second, mask=mask, other=0.0).to(tl.float32)
    # 3. rotate: y = x cos + rotate_half(x) sin
    y1 = x1 * c1 - x2 * s1
    y2 = x2 * c2 + x1 * s2
    # 4. cast on store
    tl.store(y_ptr + first, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + second, y2.to(y_ptr.dtype.element_ty), mask=mask)


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.shape != cos.shape or cos.shape != sin.shape:
        raise ValueError(f"x, cos and sin must all be (n_rows, hd); got {tuple(x.shape)}, {tuple(cos.shape)}, "
                         f"{tuple(sin.shape)}")
    if x.shape[1] % 2:
        raise ValueError(f"hd must be even, got {x.shape[1]}")
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x)
    n_rows, hd = x.shape
    if n_rows:
        _rope_rows_kernel[(n_rows,)](x, cos, sin, y, hd, HALF=hd // 2, BLOCK_HALF=triton.next_power_of_2(hd // 2))
    return y

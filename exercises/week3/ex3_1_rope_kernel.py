"""Exercise 3.1 — write the RoPE forward kernel in Triton (runs in the interpreter on a laptop).

Read lessons/week3_kernels_rope_swiglu.py first (section 3 walks through minilora/kernels/rope.py). Fill in the
body of `_rope_rows_kernel` below, then run `pytest -m ex3_1` until it is green. The launcher `rope_rows` is done.

Layout (simpler than the library's): x is (n_rows, hd) contiguous — every row is one head at one position —
and cos, sin are (n_rows, hd) contiguous too (the launcher has already repeated them per row). hd is even;
HALF = hd // 2; BLOCK_HALF is the next power of two >= HALF (tl.arange needs a power of two).

Rotate-half RoPE splits a row into halves x = [x1, x2] (x1 = x[:HALF], x2 = x[HALF:]) and cos = [c1, c2],
sin = [s1, s2] the same way, and writes
    y1 = x1 * c1 - x2 * s1        (the first half)
    y2 = x2 * c2 + x1 * s2        (the second half)
which is x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1].

One program handles one row (program id 0 = row index). Steps:
  1. row = tl.program_id(0); offsets d = tl.arange(0, BLOCK_HALF); mask = d < HALF (BLOCK_HALF may exceed HALF).
  2. Load x1 from x_ptr + row * hd + d and x2 from x_ptr + row * hd + HALF + d (masked, other=0.0), and c1, c2,
     s1, s2 the same way from cos_ptr / sin_ptr. Convert everything to tl.float32 (compute in fp32).
  3. Compute y1, y2 as above.
  4. Store them to y_ptr at the same offsets, cast back with .to(y_ptr.dtype.element_ty), masked.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _rope_rows_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, hd, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # Replace this line with the four steps of the docstring. (The interpreter runs the Python in this body.)
    raise NotImplementedError("Exercise 3.1: _rope_rows_kernel — see lessons/week3_kernels_rope_swiglu.py")


def rope_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every row of x (n_rows, hd) by the matching rows of cos/sin (n_rows, hd). Launcher: done for you."""
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

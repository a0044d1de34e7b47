"""Exercise 2.2 — rotary position embedding (RoPE) and the two layouts it comes in.

Read lessons/week2_model_family.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex2_2` until it is green.

RoPE turns position into a rotation: the head dimension hd is split into hd/2 pairs, and pair i of the token at
position p is rotated by the angle p·θ_i. Which two elements form a pair is a matter of layout:
- rotate-half (Hugging Face, minilora): element i pairs with element i + hd/2;
- interleaved (the original paper, GGUF files): element 2i pairs with element 2i + 1.
"""
import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Split the last dimension into halves [x1, x2] and return [-x2, x1] (same shape as x).

    This is the "multiply by i" of a complex number written as (real parts, imaginary parts) side by side.
    """
    raise NotImplementedError("Exercise 2.2: rotate_half — see lessons/week2_model_family.py")


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate queries and keys: $x' = x \\cos\\theta + \\mathrm{rotate\\_half}(x) \\sin\\theta$.

    q (B, n_head, T, hd), k (B, n_kv_head, T, hd); cos and sin (B or 1, T, hd) hold one angle per position and
    dimension (dimension i and i + hd/2 share an angle). They have no head axis: insert one so they broadcast over
    the heads. Return (q_rotated, k_rotated) with q's and k's shapes.
    """
    raise NotImplementedError("Exercise 2.2: apply_rope — see lessons/week2_model_family.py")


def gguf_to_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the output rows of a q_proj or k_proj weight (or bias) from GGUF's interleaved layout to rotate-half.

    weight (n_heads · hd, ...) — the first axis is the projection's output features, head after head. Within one
    head, a GGUF file stores the rows as [r_0, r_{hd/2}, r_1, r_{hd/2+1}, ...] (each rotation pair side by side);
    a rotate-half model wants [r_0, r_1, ..., r_{hd/2-1}, r_{hd/2}, ..., r_{hd-1}]. Return the reordered copy.
    (For k_proj pass the number of key/value heads.) Hint: view each head as (hd/2, 2) and swap those two axes.
    """
    raise NotImplementedError("Exercise 2.2: gguf_to_rotate_half — see lessons/week2_model_family.py")

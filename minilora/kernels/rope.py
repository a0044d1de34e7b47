"""Rotary position embedding (RoPE), rotate-half layout.

Shapes: q (B, n_head, T, hd), k (B, n_kv_head, T, hd), cos/sin (B or 1, T, hd).

Rotate-half pairs element i with element i + hd/2 of the same head:
$x' = x \\cos\\theta + \\mathrm{rotate\\_half}(x) \\sin\\theta$ with $\\mathrm{rotate\\_half}([x_1, x_2]) = [-x_2, x_1]$.
The backward of a rotation by θ is the rotation by −θ (same cos, negated sin).
"""
import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Plain PyTorch RoPE: reads q, k, cos, sin and writes several temporaries of q's size."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
    q_out = q * cos + rotate_half(q) * sin
    k_out = k * cos + rotate_half(k) * sin
    return q_out, k_out

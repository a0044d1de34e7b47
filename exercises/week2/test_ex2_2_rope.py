import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex2_2
ex = exercise("ex2_2_rope")


def angles(T, hd, base=10000.0, offset=0):
    inv_freq = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # θ_i, (hd/2,)
    return torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * inv_freq  # (T, hd/2)


def rope_as_complex(x, ang):
    """Independent reference: pair (i, i + hd/2) is the complex number x_i + j·x_{i+hd/2}, multiplied by e^{jθ}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat((z.real, z.imag), -1)


def rotate_half_to_gguf(weight, n_heads):
    """What a GGUF converter does: head by head, row 2i <- row i and row 2i+1 <- row i + hd/2."""
    hd = weight.shape[0] // n_heads
    order = [h * hd + (i // 2 if i % 2 == 0 else hd // 2 + i // 2) for h in range(n_heads) for i in range(hd)]
    return weight[order]


def interleaved_rope(x, ang):
    """RoPE as the paper writes it: elements (2i, 2i + 1) rotated by θ_i."""
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack((even * c - odd * s, even * s + odd * c), -1).flatten(-2)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=0, max_size=3), half=st.integers(1, 16))
def test_rotate_half(shape, half):
    x = torch.randn(*shape, 2 * half)
    y = ex.rotate_half(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[..., :half], -x[..., half:])
    torch.testing.assert_close(y[..., half:], x[..., :half])
    torch.testing.assert_close(ex.rotate_half(y), -x)  # two quarter turns = a half turn


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 2), groups=st.integers(1, 3), n_kv=st.integers(1, 2), T=st.integers(1, 9),
       half=st.integers(1, 8), offset=st.integers(0, 100))
def test_apply_rope_is_a_complex_rotation(B, groups, n_kv, T, half, offset):
    hd = 2 * half
    q, k = torch.randn(B, n_kv * groups, T, hd), torch.randn(B, n_kv, T, hd)
    ang = angles(T, hd, offset=offset)
    full = torch.cat((ang, ang), -1)[None].expand(B, T, hd)  # (B, T, hd): i and i + hd/2 share an angle
    q_out, k_out = ex.apply_rope(q, k, full.cos().float(), full.sin().float())
    assert q_out.shape == q.shape and k_out.shape == k.shape
    torch.testing.assert_close(q_out.double(), rope_as_complex(q, ang[None, None]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_out.double(), rope_as_complex(k, ang[None, None]), rtol=1e-5, atol=1e-5)


def test_rope_keeps_lengths_and_depends_only_on_relative_position():
    hd, T = 16, 12
    q, k = torch.randn(1, 1, T, hd), torch.randn(1, 1, T, hd)
    scores = []
    for offset in (0, 37):
        ang = angles(T, hd, offset=offset)
        full = torch.cat((ang, ang), -1)[None]
        q_rot, k_rot = ex.apply_rope(q, k, full.cos().float(), full.sin().float())
        torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps lengths
        scores.append(q_rot @ k_rot.transpose(-1, -2))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-4)  # shifting every position changes nothing


@settings(max_examples=20, deadline=None)
@given(n_heads=st.integers(1, 4), half=st.integers(1, 6), cols=st.integers(0, 5))
def test_gguf_to_rotate_half_undoes_the_converter(n_heads, half, cols):
    rows = n_heads * 2 * half
    w = torch.randn(rows, cols) if cols else torch.randn(rows)  # a weight, or a bias
    gguf = rotate_half_to_gguf(w, n_heads)
    back = ex.gguf_to_rotate_half(gguf, n_heads)
    assert back.shape == w.shape
    torch.testing.assert_close(back, w)


def test_both_layouts_give_the_same_attention_inputs():
    n_heads, hd, C, T = 3, 8, 10, 5
    W = torch.randn(n_heads * hd, C)  # a q_proj weight in rotate-half order
    x = torch.randn(T, C)
    ang = angles(T, hd, base=100.0)  # (T, hd/2)
    full = torch.cat((ang, ang), -1)
    # GGUF world: interleaved rows, interleaved RoPE
    q_gguf = (x @ rotate_half_to_gguf(W, n_heads).T).view(T, n_heads, hd).transpose(0, 1)
    rotated_gguf = interleaved_rope(q_gguf.double(), ang)  # (n_heads, T, hd)
    # our world: rows reordered on load, rotate-half RoPE
    W_ours = ex.gguf_to_rotate_half(rotate_half_to_gguf(W, n_heads), n_heads)
    q_ours = (x @ W_ours.T).view(1, T, n_heads, hd).transpose(1, 2)
    rotated_ours, _ = ex.apply_rope(q_ours, q_ours, full.cos().float()[None], full.sin().float()[None])
    # same numbers, only stored in a different order within each head
    as_ours = ex.gguf_to_rotate_half(rotated_gguf.permute(2, 0, 1), 1).permute(1, 2, 0)
    torch.testing.assert_close(rotated_ours[0].double(), as_ours, rtol=1e-5, atol=1e-5)
    # forgetting the reordering breaks it: the rotate-half RoPE then pairs the wrong elements
    q_wrong = q_gguf[None]
    wrong, _ = ex.apply_rope(q_wrong, q_wrong, full.cos().float()[None], full.sin().float()[None])
    assert not torch.allclose(wrong[0].double(), rotated_gguf, atol=1e-3)
    assert math.isclose(float(wrong.norm()), float(rotated_gguf.norm()), rel_tol=1e-4)  # still a rotation, just wrong


@pytest.mark.parametrize("B", [2, 3])
def test_apply_rope_uses_each_sequences_own_positions(B):
    """cos/sin of shape (B, T, hd) carry one row of positions per sequence (left padding, packed sequences):
    sequence b must be rotated by row b — the head axis goes between the batch and the time axes."""
    hd, T = 8, 5
    q, k = torch.randn(B, B, T, hd), torch.randn(B, 1, T, hd)  # as many heads as sequences: a misplaced axis shows
    offsets = [0, 7, 30][:B]
    ang = torch.stack([angles(T, hd, offset=o) for o in offsets])  # (B, T, hd/2): a different start per sequence
    full = torch.cat((ang, ang), -1)
    q_out, k_out = ex.apply_rope(q, k, full.cos().float(), full.sin().float())
    assert q_out.shape == q.shape and k_out.shape == k.shape
    for b, o in enumerate(offsets):
        want = angles(T, hd, offset=o)[None]
        torch.testing.assert_close(q_out[b].double(), rope_as_complex(q[b], want), rtol=1e-5, atol=1e-5,
                                   msg=f"sequence {b} (positions {o}..{o + T - 1}) was not rotated by its own angles")
        torch.testing.assert_close(k_out[b].double(), rope_as_complex(k[b], want), rtol=1e-5, atol=1e-5)

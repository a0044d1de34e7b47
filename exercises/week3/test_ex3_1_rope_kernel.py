import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.kernels.rope import rotate_half

pytestmark = pytest.mark.ex3_1
ex = exercise("ex3_1_rope_kernel")


def _tables(n_rows, hd, gen):
    pos = torch.randint(0, 500, (n_rows, 1), generator=gen).double()
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.cat([pos * inv, pos * inv], -1)
    return ang.cos().float(), ang.sin().float()


@settings(max_examples=10, deadline=None)
@given(n_rows=st.integers(1, 40), half=st.integers(1, 24), seed=st.integers(0, 1000))
def test_matches_rotate_half_formula(n_rows, half, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_rows, 2 * half, generator=gen)
    cos, sin = _tables(n_rows, 2 * half, gen)
    expected = x * cos + rotate_half(x) * sin
    torch.testing.assert_close(ex.rope_rows(x, cos, sin), expected, rtol=1e-5, atol=1e-5)


def test_keeps_norm_of_every_pair():
    """A rotation changes no lengths: |(y_i, y_{i+hd/2})| = |(x_i, x_{i+hd/2})| for a real cos/sin table."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 10, generator=gen)
    cos, sin = _tables(7, 10, gen)
    y = ex.rope_rows(x, cos, sin)
    torch.testing.assert_close(y[:, :5] ** 2 + y[:, 5:] ** 2, x[:, :5] ** 2 + x[:, 5:] ** 2, rtol=1e-5, atol=1e-5)


def test_half_precision_output():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 12, generator=gen).half()
    cos, sin = _tables(5, 12, gen)
    y = ex.rope_rows(x, cos.half(), sin.half())
    assert y.dtype == torch.float16
    expected = x.float() * cos.half().float() + rotate_half(x.float()) * sin.half().float()
    torch.testing.assert_close(y.float(), expected, rtol=2e-3, atol=2e-3)


def test_half_precision_is_computed_in_float32():
    """Step 2 converts every load to fp32: the result must be the fp32 formula rounded ONCE to fp16 at the store
    (fp16 products and sums would round at every step and drift by up to a few fp16 steps)."""
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 48, generator=gen) * 4).half()
    cos, sin = (t.half() for t in _tables(64, 48, gen))
    y = ex.rope_rows(x, cos, sin)
    exact = (x.float() * cos.float() + rotate_half(x.float()) * sin.float()).half()
    off = int((y != exact).sum())
    assert off == 0, f"{off} of {y.numel()} fp16 outputs differ from the fp32 computation: convert x, cos and sin " \
                     f"to tl.float32 after loading, and cast back only when storing"

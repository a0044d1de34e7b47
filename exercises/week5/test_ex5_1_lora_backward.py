import pytest
import torch
from hypothesis import given, settings, strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex5_1
ex = exercise("ex5_1_lora_backward")


def autograd_grads(x, W, A, B, s, dy):
    x, A, B = (t.clone().requires_grad_() for t in (x, A, B))
    y = x @ W.T + s * (x @ A.T) @ B.T
    y.backward(dy)
    return x.grad, A.grad, B.grad


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 9), d_in=st.integers(1, 17), d_out=st.integers(1, 17), r=st.integers(1, 6),
       s=st.floats(0.1, 4.0))
def test_matches_autograd(N, d_in, d_out, r, s):
    g = torch.Generator().manual_seed(N * 100 + d_in * 10 + r)
    x, W = torch.randn(N, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, d_in, generator=g,
                                                                               dtype=torch.float64)
    A, B = torch.randn(r, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, r, generator=g,
                                                                               dtype=torch.float64)
    dy = torch.randn(N, d_out, generator=g, dtype=torch.float64)
    got = ex.lora_backward(x, W, A, B, s, dy)
    assert len(got) == 3, "return (dx, dA, dB)"
    for name, a, b in zip(("dx", "dA", "dB"), got, autograd_grads(x, W, A, B, s, dy)):
        assert a.shape == b.shape, f"{name} has shape {tuple(a.shape)}, expected {tuple(b.shape)}"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name} differs from autograd")


def test_zero_B_still_trains_A_only_through_B():
    # at initialization B = 0: dA must be 0 (A's effect passes through B), dB must not be
    x, W, A = torch.randn(4, 6), torch.randn(5, 6), torch.randn(2, 6)
    dx, dA, dB = ex.lora_backward(x, W, A, torch.zeros(5, 2), 2.0, torch.randn(4, 5))
    assert torch.count_nonzero(dA) == 0
    assert torch.count_nonzero(dB) > 0
    assert dx.shape == x.shape

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_thin_intermediates_and_no_autograd():
    """By hand, with thin matmuls: no (out, in) matrix (not B A, and no dW: W is frozen), no autograd."""
    from exercises.checks import new_tensors_of_shape, no_autograd, record_torch_calls
    N, d_in, d_out, r = 5, 11, 7, 2
    g = torch.Generator().manual_seed(3)
    x, W, A, B, dy = (torch.randn(*s, generator=g, dtype=torch.float64)
                      for s in ((N, d_in), (d_out, d_in), (r, d_in), (d_out, r), (N, d_out)))
    with no_autograd("derive dx, dA and dB with the chain rule: no autograd here"), record_torch_calls() as calls:
        got = ex.lora_backward(x, W, A, B, 0.5, dy)
    for a, b in zip(got, autograd_grads(x, W, A, B, 0.5, dy)):
        torch.testing.assert_close(a, b)
    formed = new_tensors_of_shape(calls, (d_out, d_in), (d_in, d_out))
    assert not formed, (f"lora_backward built a full ({d_out}, {d_in}) matrix (in {', '.join(formed)}): keep every "
                        f"intermediate thin — dy @ B is (N, r), x @ A.T is (N, r) — and compute no dW")

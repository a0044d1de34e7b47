import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.checks import no_autograd
from exercises.conftest import exercise
from minilora.memory import AllocationLog

pytestmark = pytest.mark.ex5_3
ex = exercise("ex5_3_qkv_backward")


def make(N, C, outs, r, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=dtype)
    projections = [(torch.randn(o, C, generator=g, dtype=dtype), torch.randn(r, C, generator=g, dtype=dtype),
                    torch.randn(o, r, generator=g, dtype=dtype), 0.5 + i) for i, o in enumerate(outs)]
    d_outs = [torch.randn(N, o, generator=g, dtype=dtype) for o in outs]
    return x, projections, d_outs


def autograd_grads(x, projections, d_outs):
    x = x.clone().requires_grad_()
    leaves = [(A.clone().requires_grad_(), B.clone().requires_grad_()) for _, A, B, _ in projections]
    total = 0
    for (W, _, _, s), (A, B), dy in zip(projections, leaves, d_outs):
        total = total + ((x @ W.T + s * (x @ A.T) @ B.T) * dy).sum()
    total.backward()
    return x.grad, [A.grad for A, _ in leaves], [B.grad for _, B in leaves]


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 9), C=st.integers(1, 13), q=st.integers(1, 13), kv=st.integers(1, 9), r=st.integers(1, 5))
def test_matches_autograd(N, C, q, kv, r):
    x, projections, d_outs = make(N, C, (q, kv, kv), r, seed=N * 1000 + C * 10 + r)
    got = ex.qkv_backward(x, projections, d_outs)
    assert len(got) == 3, "return (dx, [dA_q, dA_k, dA_v], [dB_q, dB_k, dB_v])"
    dx, dAs, dBs = got
    want_dx, want_dAs, want_dBs = autograd_grads(x, projections, d_outs)
    assert dx.shape == want_dx.shape, f"dx has shape {tuple(dx.shape)}, expected {tuple(want_dx.shape)}"
    torch.testing.assert_close(dx, want_dx, rtol=1e-10, atol=1e-10,
                               msg="dx differs from autograd: it is the SUM over q, k and v of dy W + s (dy B) A")
    for name, mine, want in [("dA", dAs, want_dAs), ("dB", dBs, want_dBs)]:
        assert len(mine) == 3, f"return three {name}, one per projection"
        for p, a, b in zip("qkv", mine, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name}_{p} differs from autograd")


def test_one_dx_buffer_and_no_BA():
    N, C, outs, r = 5, 11, (8, 6, 6), 3  # all different, so a shape names what was built
    x, projections, d_outs = make(N, C, outs, r, seed=7)
    with AllocationLog() as seen:  # every new tensor an op returns (in-place results are not new)
        dx, _, _ = ex.qkv_backward(x, projections, d_outs)
    n_dx = seen.shapes.count((N, C))
    assert n_dx == 1, (f"{n_dx} new (N, C) tensors were created; dx must be ONE buffer: start it once "
                       f"(dx = dq @ Wq) and add every other term in place with dx.addmm_(a, b, alpha=s)")
    full_size = {(o, C) for o in outs} | {(C, o) for o in outs}  # B A, or its transpose A^T B^T
    formed = [s for s in seen.shapes if s in full_size]
    assert not formed, (f"a matrix of shape {formed[0]} was formed — that is B A (or its transpose), as big as W; "
                        "multiply (dy B) (N, r) by A instead")
    torch.testing.assert_close(dx, autograd_grads(x, projections, d_outs)[0], rtol=1e-10, atol=1e-10)


def test_no_autograd():
    x, projections, d_outs = make(5, 11, (8, 6, 6), 3, seed=9)
    with no_autograd("Exercise 5.3 asks for the backward written out (plain matmuls, no autograd): derive dx, "
                     "dA = s (dy B)^T x and dB = s dy^T (x A^T) with the chain rule"):
        got = ex.qkv_backward(x, projections, d_outs)
    want_dx, want_dAs, want_dBs = autograd_grads(x, projections, d_outs)
    torch.testing.assert_close(got[0], want_dx, rtol=1e-10, atol=1e-10)

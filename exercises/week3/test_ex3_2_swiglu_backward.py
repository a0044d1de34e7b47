import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex3_2
ex = exercise("ex3_2_swiglu_backward")


def test_silu_derivative_matches_autograd():
    g = torch.linspace(-12, 12, 241, dtype=torch.float64, requires_grad=True)
    F.silu(g).sum().backward()
    torch.testing.assert_close(ex.silu_derivative(g.detach()), g.grad)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 33), seed=st.integers(0, 10_000))
def test_swiglu_backward_matches_autograd(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    g = (3 * torch.randn(rows, cols, generator=gen, dtype=torch.float64)).requires_grad_()
    u = torch.randn(rows, cols, generator=gen, dtype=torch.float64).requires_grad_()
    dh = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    (F.silu(g) * u).backward(dh)
    dg, du = ex.swiglu_backward(dh, g.detach(), u.detach())
    torch.testing.assert_close(dg, g.grad)
    torch.testing.assert_close(du, u.grad)


def test_matches_the_library_kernel_formula():
    """The Triton kernel in minilora/kernels/swiglu.py computes the same numbers (run here through the reference)."""
    from minilora.kernels.swiglu import swiglu_reference
    g = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    u = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    swiglu_reference(g, u).sum().backward()
    dg, du = ex.swiglu_backward(torch.ones(4, 5, dtype=torch.float64), g.detach(), u.detach())
    torch.testing.assert_close(dg, g.grad)
    torch.testing.assert_close(du, u.grad)


def test_the_formula_is_written_out_not_asked_of_autograd():
    """The point is the formula the Triton kernel recomputes from g: autograd may check it, not produce it."""
    from exercises.checks import no_autograd
    g, u, dh = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), \
        torch.randn(3, 4, dtype=torch.float64)
    with no_autograd("write silu'(g) and the two gradients as formulas (s = torch.sigmoid(g)): no autograd here"):
        d_silu = ex.silu_derivative(g)
        dg, du = ex.swiglu_backward(dh, g, u)
    s = torch.sigmoid(g)
    torch.testing.assert_close(d_silu, s * (1 + g * (1 - s)))
    torch.testing.assert_close(dg, dh * u * d_silu)
    torch.testing.assert_close(du, dh * g * s)

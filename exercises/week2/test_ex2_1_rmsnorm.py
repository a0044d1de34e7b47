import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex2_1
ex = exercise("ex2_1_rmsnorm")


def rms_norm_float64(x, weight, eps):
    x64 = x.double()
    return weight.double() * x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), hidden=st.integers(1, 70),
       eps=st.sampled_from([1e-6, 1e-5, 1e-2]), seed=st.integers(0, 2**16))
def test_matches_the_formula_in_float64(shape, hidden, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(*shape, hidden, generator=g) * 3, torch.randn(hidden, generator=g)
    y = ex.rms_norm(x, w, eps)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), rms_norm_float64(x, w, eps), rtol=1e-5, atol=1e-5)


def test_matches_torch_rms_norm():
    x, w = torch.randn(4, 5, 48), torch.randn(48)
    torch.testing.assert_close(ex.rms_norm(x, w, 1e-6), torch.nn.functional.rms_norm(x, (48,), w, eps=1e-6))


def test_rows_of_unit_rms_come_out_unchanged():
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 0.0, 0.0]])  # rms 1 each
    torch.testing.assert_close(ex.rms_norm(x, torch.ones(4), 1e-12), x)  # eps must be > 0


def test_scaling_a_row_does_not_change_the_output():
    x, w = torch.randn(3, 16), torch.randn(16)
    torch.testing.assert_close(ex.rms_norm(1000 * x, w, 1e-12), ex.rms_norm(x, w, 1e-12), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_casts_back_before_the_weight(dtype):
    x, w = torch.randn(6, 32).to(dtype), torch.randn(32).to(dtype)
    y = ex.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype
    normed = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    torch.testing.assert_close(y, w * normed, rtol=0, atol=0)  # exactly Llama's order of operations


def test_gradients_match_the_float64_formula():
    x, w = torch.randn(2, 3, 8, requires_grad=True), torch.randn(8, requires_grad=True)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    upstream = torch.randn(2, 3, 8)
    ex.rms_norm(x, w, 1e-5).backward(upstream)
    rms_norm_float64(x64, w64, 1e-5).backward(upstream.double())
    assert x.grad is not None and w.grad is not None, "gradients must flow to both x and weight"
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)

"""Triton RMSNorm vs the PyTorch reference: output, dx and dw, odd shapes, fp32/fp16/bf16.

On CPU through the Triton interpreter; the `gpu`-marked copies run compiled on CUDA.

Tolerances. Output: the reference in the SAME dtype (it normalizes in fp32, rounds to x's dtype, then multiplies by
the weight — the kernel does exactly that), within 1 ulp of the output dtype for fp16. bf16: within 4 ulp — there
are two roundings (x̂ to bf16, then x̂·w), the interpreter truncates instead of rounding to nearest, and a 1-ulp
change of x̂ moves y by |w|·ulp(x̂) ≤ 2 ulp(y) here, plus 1 ulp for the final store. Gradients: the reference in
float64 on the same rounded inputs; dx within 1 ulp + 1e-3·max|dx| for 16-bit (dx = r (g − x̂ mean(g x̂)) cancels),
dw (a sum over rows in fp32 of dy times x̂ ROUNDED to x's dtype — the truth does not round) within 2 ulp + a slack
relative to max|dw| set by x's dtype: 2e-3 for fp16, 1e-2 for bf16 (the interpreter's truncation of x̂ is biased
toward zero, and the bias adds up over rows), 1e-4 for fp32. Plus 1e-6 absolute everywhere. fp32: rtol 1e-5 relative to max|truth| (1e-4 for dw, a long fp32 sum).
"""
import pytest
import torch
from hypothesis import Phase, given, settings, strategies as st

from minilora import ops
from tests.ulp import DEVICES, DTYPES, assert_within_ulp


def assert_within_ulp_rms(*args, **kw):
    kw.setdefault("atol", 1e-6)  # hidden size 1 gives dx = 0 exactly: an absolute floor
    return assert_within_ulp(*args, **kw)
from minilora.kernels.rmsnorm import rms_norm_fast, rms_norm_reference




def _check(shape, dtype, w_dtype, device, seed, train_weight=True, eps=1e-6):
    gen = torch.Generator().manual_seed(seed)
    x0 = (torch.randn(shape, generator=gen) * 2).to(dtype)
    w0 = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(w_dtype)
    out_dtype = torch.promote_types(dtype, w_dtype)
    dy = torch.randn(shape, generator=gen).to(out_dtype)
    y_ref = rms_norm_reference(x0, w0, eps)  # same dtype: same roundings
    x64, w64 = x0.double().requires_grad_(), w0.double().requires_grad_(train_weight)
    rms_norm_reference(x64, w64, eps).backward(dy.double())

    x = x0.to(device).requires_grad_()
    w = w0.to(device).requires_grad_(train_weight)
    y = rms_norm_fast(x, w, eps)
    y.backward(dy.to(device))
    assert y.dtype == out_dtype == y_ref.dtype and y.shape == x0.shape
    # the ulp of x's dtype: x̂ is rounded to it, even when a float32 weight makes the output float32
    assert_within_ulp_rms(y, y_ref, dtype, ulps=4 if dtype == torch.bfloat16 else 1)
    slack = 1e-5 if dtype == torch.float32 else 1e-3
    assert_within_ulp_rms(x.grad, x64.grad, dtype, slack=slack)
    if train_weight:
        slack = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
        assert_within_ulp_rms(w.grad, w64.grad, w_dtype, ulps=2, slack=slack)
    else:
        assert w.grad is None


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: slow in the interpreter
@given(dtype=st.sampled_from(DTYPES), fp32_weight=st.booleans(), train_weight=st.booleans(),
       shape=st.sampled_from([(3, 5, 73), (1, 1), (7, 1000), (2, 3, 17), (33, 128)]), seed=st.integers(0, 2**16))
def test_matches_reference(device, dtype, fp32_weight, train_weight, shape, seed):
    _check(shape, dtype, torch.float32 if fp32_weight else dtype, device, seed, train_weight)


@pytest.mark.parametrize("device", DEVICES)
def test_odd_shape_all_dtypes(device):
    for dtype in DTYPES:
        _check((3, 41, 73), dtype, dtype, device, 1)


def test_stores_one_reciprocal_rms_per_row():
    from minilora.kernels.rmsnorm import rms_norm_forward
    x, w = torch.randn(6, 5, 19), torch.ones(19)
    _, r = rms_norm_forward(x, w, 1e-5)
    assert r.shape == (30,) and r.dtype == torch.float32
    torch.testing.assert_close(r, torch.rsqrt(x.reshape(30, 19).pow(2).mean(-1) + 1e-5))


def test_only_weight_needs_grad():
    x = torch.randn(4, 12)
    w = torch.randn(12).requires_grad_()
    rms_norm_fast(x, w, 1e-6).sum().backward()
    w64 = w.detach().double().requires_grad_()
    rms_norm_reference(x.double(), w64, 1e-6).sum().backward()
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)


def test_through_the_ops_switch():
    x, w = torch.randn(2, 3, 40), torch.randn(40)
    with ops.use_kernels("triton"):
        y = ops.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(y, rms_norm_reference(x, w, 1e-5), rtol=1e-5, atol=1e-5)


def test_gradcheck_reference_float64():
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rms_norm_reference(a, b, 1e-6), (x, w))


def test_bad_input_errors():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_fast(x, torch.ones(5), 1e-6)
    with pytest.raises(ValueError, match="not contiguous"):
        rms_norm_fast(torch.randn(6, 4).t(), torch.ones(6), 1e-6)
    with pytest.raises(TypeError, match="float64"):
        rms_norm_fast(x.double(), torch.ones(6, dtype=torch.float64), 1e-6)
    with pytest.raises(TypeError, match="weight dtype"):
        rms_norm_fast(x, torch.ones(6, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="eps"):
        rms_norm_fast(x, torch.ones(6), 0.0)
    with pytest.raises(ValueError, match="one-block limit"):
        rms_norm_fast(torch.empty(1, 65537), torch.ones(65537), 1e-6)


def test_empty_rows():
    x = torch.empty(0, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    y = rms_norm_fast(x, w, 1e-6)
    y.sum().backward()
    assert y.shape == (0, 8) and torch.equal(w.grad, torch.zeros(8))

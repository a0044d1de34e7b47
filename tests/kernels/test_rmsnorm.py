"""Triton RMSNorm vs the PyTorch reference: output, dx and dw, odd shapes, fp32/fp16/bf16.

On CPU through the Triton interpreter; the `gpu`-marked copies run compiled on CUDA, over 200 seeds per case.

Tolerances are derived from the arithmetic, element by element (`bounds` below), not picked as constants.
With n = hidden size, N = rows, u = 2^-24 (fp32's unit roundoff), ulp_d(v) = one unit in the last place of v in
dtype d, r = 1/rms, x̂ = x r and g = dy w:

- r: a sum of n fp32 squares (error ≤ n u relative), a division, + eps, rsqrt (≤ 2 ulp on a GPU). Through the
  square root the relative error halves: e_r = (n/2 + 6) u. Both the kernel and the reference have one.
- y = round_out(round_x(x̂) w): the reference rounds at the same two places, so the two differ by the r error
  moving x̂ (2 e_r |x̂| |w|) and by the two roundings themselves: torch rounds to nearest (≤ ½ ulp) while the
  kernel rounds to nearest on a GPU but truncates in Triton's interpreter (≤ 1 ulp), so two results of one
  rounding can lie 1½ ulp apart — at x̂ (1½ |w| ulp_x(x̂)) and at the store (1½ ulp_out(y)).
- dx = r (g − x̂ mean(g x̂)) cancels: its error scales with the terms subtracted, not with dx. With M = mean|g x̂|:
  r [(|g| + |x̂| M)(3 e_r + 4u) + |x̂| n u M] for the arithmetic, plus ulp_x(dx) for the store.
- dw = Σ_rows dy round_x(x̂) against the float64 truth Σ dy x̂ (unrounded): Σ |dy| (ulp_x(x̂) + (e_r + u)|x̂|) for
  the rounding of x̂, N u Σ |dy x̂| for the fp32 sum over rows, plus ulp_w(dw) for the store.
"""
import pytest
import torch
from helpers.ulp import DEVICES, DTYPES, MANTISSA, TINY
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from minilora import ops
from minilora.kernels.rmsnorm import rms_norm_fast, rms_norm_reference

U32 = 2.0 ** -24
SHAPES = [(3, 5, 73), (1, 1), (7, 1000), (2, 3, 17), (33, 128)]


def ulp(v: torch.Tensor, dtype) -> torch.Tensor:
    """One unit in the last place of |v| in `dtype` (float64 tensor in, float64 tensor out)."""
    mag = v.abs().clamp_min(TINY[dtype])
    return torch.exp2(torch.floor(torch.log2(mag)) - MANTISSA[dtype])


def bounds(x0, w0, dy, eps):
    """Per-element error bounds (see the module docstring) for y, dx and dw; all float64 on the CPU."""
    x, w, g_out = x0.double(), w0.double(), dy.double()
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    N = rows.shape[0]
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    x_hat = x * r
    e_r = (n / 2 + 6) * U32
    xd, wd, od = x0.dtype, w0.dtype, torch.promote_types(x0.dtype, w0.dtype)
    y = x_hat.to(xd).double() * w
    b_y = w.abs() * (1.5 * ulp(x_hat, xd) + 2 * e_r * x_hat.abs()) + 1.5 * ulp(y, od)
    g = g_out * w
    M = (g * x_hat).abs().mean(-1, keepdim=True)
    dx = r * (g - x_hat * (g * x_hat).mean(-1, keepdim=True))
    b_dx = r * ((g.abs() + x_hat.abs() * M) * (3 * e_r + 4 * U32) + x_hat.abs() * n * U32 * M) + ulp(dx, xd)
    dyr, xr = g_out.reshape(-1, n), x_hat.reshape(-1, n)
    dw = (dyr * xr).sum(0)
    b_dw = ((dyr.abs() * (ulp(xr, xd) + (e_r + U32) * xr.abs())).sum(0) + N * U32 * (dyr * xr).abs().sum(0)
            + ulp(dw, wd))
    return b_y, b_dx, b_dw


def assert_within(actual, truth, bound, what):
    err = (actual.detach().double().cpu() - truth.detach().double().cpu()).abs()
    bad = err > bound + 1e-300
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements exceed the derived bound; worst "
                           f"{float((err / bound.clamp_min(1e-300)).max()):.2f}x it")


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
    b_y, b_dx, b_dw = bounds(x0, w0, dy, eps)
    assert_within(y, y_ref, b_y, "y")
    assert_within(x.grad, x64.grad, b_dx, "dx")
    if train_weight:
        assert_within(w.grad, w64.grad, b_dw, "dw")
    else:
        assert w.grad is None


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: slow in the interpreter
@given(dtype=st.sampled_from(DTYPES), fp32_weight=st.booleans(), train_weight=st.booleans(),
       shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16))
def test_matches_reference(device, dtype, fp32_weight, train_weight, shape, seed):
    _check(shape, dtype, torch.float32 if fp32_weight else dtype, device, seed, train_weight)


@pytest.mark.parametrize("device", DEVICES)
def test_odd_shape_all_dtypes(device):
    for dtype in DTYPES:
        _check((3, 41, 73), dtype, dtype, device, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(16, 4096)])
def test_bound_holds_over_200_seeds(shape, dtype):
    for seed in range(200):
        _check(shape, dtype, dtype, "cuda", seed)
        _check(shape, dtype, torch.float32, "cuda", seed, train_weight=seed % 2 == 0)


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

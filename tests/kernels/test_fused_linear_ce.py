"""Fused linear + cross-entropy (minilora/kernels/fused_linear_ce.py) against the unfused reference.

The loss and all three gradients (hidden, weight, bias) are compared; the chunk size is varied so that the last
chunk is ragged. Tolerances: fp32 1e-5 rel / 1e-6 abs on the gradients; fp16 and bf16 — the weight gradient is
accumulated chunk by chunk in the weight's dtype, so a few ulps: 1e-2 / 2e-2 rel and 1e-3 abs.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.kernels.fused_linear_ce import (
    default_chunk_size,
    fused_linear_cross_entropy_fast,
    fused_linear_cross_entropy_reference,
)

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float16: dict(rtol=1e-2, atol=1e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=1e-3)}


def make(N, H, V, dtype, seed=0, bias=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype).to(device)
    weight = (torch.randn(V, H, generator=g) / H ** 0.5).to(dtype).to(device)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype).to(device) if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::4] = -100
    return hidden, weight, b, labels.to(device)


def compare(hidden, weight, bias, labels, chunk_size=None, softcap=None, grad_scale=1.0, frozen_weight=False,
            num_items=None):
    leaves_fast = [t.clone().requires_grad_(not (frozen_weight and i == 1)) if t is not None else None
                   for i, t in enumerate((hidden, weight, bias))]
    leaves_ref = [t.clone().float().requires_grad_(not (frozen_weight and i == 1)) if t is not None else None
                  for i, t in enumerate((hidden, weight, bias))]
    fast = fused_linear_cross_entropy_fast(leaves_fast[0], leaves_fast[1], labels, softcap=softcap,
                                           bias=leaves_fast[2], chunk_size=chunk_size, num_items=num_items)
    ref = fused_linear_cross_entropy_reference(leaves_ref[0], leaves_ref[1], labels, softcap=softcap,
                                               bias=leaves_ref[2], num_items=num_items)
    tol = TOL[hidden.dtype]
    torch.testing.assert_close(fast, ref, rtol=max(tol["rtol"], 1e-4), atol=1e-4)
    (fast * grad_scale).backward()
    (ref * grad_scale).backward()
    for f, r in zip(leaves_fast, leaves_ref):
        if f is None:
            continue
        if not f.requires_grad:
            assert f.grad is None
            continue
        assert f.grad.dtype == f.dtype
        torch.testing.assert_close(f.grad.float(), r.grad, **tol)


@settings(max_examples=12, deadline=None)
@given(N=st.integers(1, 40), H=st.integers(1, 24), V=st.integers(2, 300), chunk=st.integers(1, 48),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), bias=st.booleans(),
       softcap=st.sampled_from([None, 10.0]), seed=st.integers(0, 999))
def test_matches_unfused_on_odd_shapes(N, H, V, chunk, dtype, bias, softcap, seed):
    compare(*make(N, H, V, dtype, seed, bias), chunk_size=chunk, softcap=softcap, grad_scale=0.5)


def test_frozen_lm_head_computes_no_weight_gradient():
    compare(*make(13, 8, 50, torch.float32), chunk_size=5, frozen_weight=True)


def test_num_items_and_default_chunk():
    compare(*make(21, 8, 40, torch.float32), num_items=50)
    assert default_chunk_size(8192, 128256, 2) == 256  # 64 MiB of bf16 logits per chunk
    assert default_chunk_size(10, 128256, 2) == 10
    assert default_chunk_size(8192, 128256, 2, weight_trainable=True) == 1024  # the head's gradient dwarfs 256 MiB


def test_chunked_vocab_path():
    compare(*make(2, 4, 65536 + 700, torch.float32), chunk_size=2)


@pytest.mark.parametrize("args, error, match", [
    (lambda h, w, y: (h, w[:, :-1], y), ValueError, "features"),
    (lambda h, w, y: (h[None], w, y), ValueError, "tokens, H"),
    (lambda h, w, y: (h, w.half(), y), TypeError, "share dtype"),
    (lambda h, w, y: (h.double(), w.double(), y), TypeError, "float32, float16 and bfloat16"),
    (lambda h, w, y: (h, w, y[:-1]), ValueError, "one label per token"),
    (lambda h, w, y: (h.T.contiguous().T, w, y), ValueError, "contiguous"),
])
def test_bad_input_is_refused(args, error, match):
    h, w, _, y = make(6, 5, 7, torch.float32)
    with pytest.raises(error, match=match):
        fused_linear_cross_entropy_fast(*args(h, w, y))


def test_bad_chunk_size_is_refused():
    h, w, _, y = make(6, 5, 7, torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy_fast(h, w, y, chunk_size=0)


@settings(max_examples=5, deadline=None)
@given(N=st.integers(1, 4), V=st.integers(2, 6))
def test_reference_gradcheck_float64(N, V):
    h = torch.randn(N, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (N,))
    assert torch.autograd.gradcheck(lambda a, b: fused_linear_cross_entropy_reference(a, b, y, softcap=4.0), (h, w))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N, H, V, chunk", [(77, 64, 1000, 16), (300, 128, 128256, None), (64, 32, 70001, 40)])
def test_gpu_matches_unfused(N, H, V, chunk, dtype):
    compare(*make(N, H, V, dtype, bias=True, device="cuda"), chunk_size=chunk, softcap=30.0)


def test_two_kernel_path_matches_too(monkeypatch):
    from minilora.kernels import fused_linear_ce
    monkeypatch.setattr(fused_linear_ce, "ONE_LAUNCH_CE", False)
    compare(*make(19, 8, 70, torch.float32, bias=True), chunk_size=6, softcap=5.0, grad_scale=3.0)

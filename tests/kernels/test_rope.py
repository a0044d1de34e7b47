"""Triton RoPE vs the PyTorch reference: q and k rotated in one launch, outputs and gradients, odd shapes,
fp32/fp16/bf16, both cos/sin shapes ((1, T, hd) shared and (B, T, hd) per-sequence positions), any q/k strides,
in place or not.

On CPU through the Triton interpreter; the `gpu`-marked copies run compiled on CUDA.

Tolerances. The truth is the reference evaluated in float64 on the same rounded inputs (q, k, cos, sin). The kernel
computes in fp32 and rounds once on store: within ONE ulp of the output dtype at the truth's magnitude, plus
1e-5·max|truth| for values that cancel to ~0 (x1 c − x2 s). fp32: rtol 1e-5 relative to max|truth|. The
interpreter truncates fp32 → bf16 (torch rounds to nearest): still within one ulp.
"""
import pytest
import torch
from helpers.ulp import DEVICES, DTYPES, assert_within_ulp
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from minilora import ops
from minilora.kernels.rope import rope_fast, rope_reference


def tables(B, T, hd, dtype, per_sequence, gen):
    """cos/sin like the model's RotaryEmbedding; per_sequence=True gives each row its own positions (packing)."""
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).double() / hd))
    if per_sequence:
        pos = torch.stack([torch.randperm(T, generator=gen) for _ in range(B)]).double()  # (B, T)
    else:
        pos = torch.arange(T).double()[None]  # (1, T)
    ang = pos[:, :, None] * inv
    ang = torch.cat([ang, ang], -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _check(B, Hq, Hk, T, hd, dtype, device, per_sequence, seed, transposed=False, inplace=False):
    gen = torch.Generator().manual_seed(seed)
    if transposed:  # the model's layout: (B, T, H, hd) projections viewed as (B, H, T, hd)
        q0 = torch.randn(B, T, Hq, hd, generator=gen).to(dtype).transpose(1, 2)
        k0 = torch.randn(B, T, Hk, hd, generator=gen).to(dtype).transpose(1, 2)
    else:
        q0 = torch.randn(B, Hq, T, hd, generator=gen).to(dtype)
        k0 = torch.randn(B, Hk, T, hd, generator=gen).to(dtype)
    cos, sin = tables(B, T, hd, dtype, per_sequence, gen)
    dq, dk = torch.randn(q0.shape, generator=gen).to(dtype), torch.randn(k0.shape, generator=gen).to(dtype)

    q64, k64 = q0.double().requires_grad_(), k0.double().requires_grad_()
    a64, c64 = rope_reference(q64, k64, cos.double(), sin.double())
    torch.autograd.backward([a64, c64], [dq.double(), dk.double()])

    ql, kl = q0.to(device).requires_grad_(), k0.to(device).requires_grad_()
    q_in, k_in = (ql * 1, kl * 1) if inplace else (ql, kl)  # in place needs non-leaf inputs (`* 1` keeps strides)
    a, c = rope_fast(q_in, k_in, cos.to(device), sin.to(device), inplace=inplace)
    if inplace:
        assert a.data_ptr() == q_in.data_ptr() and c.data_ptr() == k_in.data_ptr()
    else:
        assert a.stride() == ql.stride() and c.stride() == kl.stride()
    torch.autograd.backward([a, c], [dq.to(device), dk.to(device)])
    assert a.dtype == c.dtype == dtype
    for actual, truth in ((a, a64), (c, c64), (ql.grad, q64.grad), (kl.grad, k64.grad)):
        assert_within_ulp(actual, truth, dtype)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking: slow in the interpreter
@given(dtype=st.sampled_from(DTYPES), B=st.integers(1, 3), Hk=st.integers(1, 3), rep=st.integers(1, 3),
       T=st.integers(1, 40), hd=st.sampled_from([2, 6, 16, 22, 64]), per_sequence=st.booleans(),
       transposed=st.booleans(), inplace=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(device, dtype, B, Hk, rep, T, hd, per_sequence, transposed, inplace, seed):
    _check(B, Hk * rep, Hk, T, hd, dtype, device, per_sequence, seed, transposed, inplace)


@pytest.mark.parametrize("device", DEVICES)
def test_odd_shape_all_dtypes(device):
    for dtype in DTYPES:  # 3 sequences x 73 positions, head_dim 42, 4 query heads sharing 2 key heads
        _check(3, 4, 2, 73, 42, dtype, device, per_sequence=True, seed=3, transposed=True)


def test_backward_is_rotation_by_minus_theta():
    gen = torch.Generator().manual_seed(0)
    cos, sin = tables(1, 9, 8, torch.float32, False, gen)
    q = torch.randn(2, 3, 9, 8, requires_grad=True)
    k = torch.randn(2, 1, 9, 8, requires_grad=True)
    dq, dk = torch.randn(2, 3, 9, 8), torch.randn(2, 1, 9, 8)
    a, c = rope_fast(q, k, cos, sin)
    torch.autograd.backward([a, c], [dq, dk])
    back_q, back_k = rope_reference(dq, dk, cos, -sin)  # rotate by −θ: same cos, negated sin
    torch.testing.assert_close(q.grad, back_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.grad, back_k, rtol=1e-5, atol=1e-5)


def test_through_the_ops_switch():
    gen = torch.Generator().manual_seed(1)
    cos, sin = tables(2, 5, 16, torch.float32, True, gen)
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)
    with ops.use_kernels("triton"):
        a, c = ops.rope(q, k, cos, sin)
    ra, rc = rope_reference(q, k, cos, sin)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-5)


def test_gradcheck_reference_float64():
    gen = torch.Generator().manual_seed(2)
    cos, sin = tables(2, 3, 4, torch.float64, True, gen)
    q = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rope_reference(a, b, cos, sin), (q, k))


def test_bad_input_errors():
    gen = torch.Generator().manual_seed(0)
    cos, sin = tables(1, 5, 8, torch.float32, False, gen)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match="must match q"):
        rope_fast(q, torch.randn(2, 2, 6, 8), cos, sin)
    with pytest.raises(ValueError, match="4-D"):
        rope_fast(q[0], k[0], cos, sin)
    with pytest.raises(ValueError, match="even"):
        c7, s7 = tables(1, 5, 8, torch.float32, False, gen)
        rope_fast(torch.randn(2, 4, 5, 7), torch.randn(2, 2, 5, 7), c7[..., :7], s7[..., :7])
    with pytest.raises(ValueError, match="cos/sin must have shape"):
        rope_fast(q, k, cos[:, :4], sin[:, :4])
    with pytest.raises(ValueError, match="cos/sin must have shape"):
        c3, s3 = tables(3, 5, 8, torch.float32, True, gen)
        rope_fast(q, k, c3, s3)
    with pytest.raises(TypeError, match=r"\.to\(q\.dtype\)"):
        rope_fast(q, k, cos.half(), sin.half())
    with pytest.raises(TypeError, match="same dtype"):
        rope_fast(q, k.half(), cos, sin)
    with pytest.raises(TypeError, match="float64"):
        rope_fast(q.double(), k.double(), cos.double(), sin.double())


def test_inplace_refuses_leaves_and_views():
    gen = torch.Generator().manual_seed(0)
    cos, sin = tables(1, 5, 8, torch.float32, False, gen)
    q = torch.randn(2, 5, 4, 8, requires_grad=True)
    k = torch.randn(2, 2, 5, 8, requires_grad=True)
    with pytest.raises(ValueError, match="view"):
        rope_fast((q * 1).transpose(1, 2), k * 1, cos, sin, inplace=True)
    with pytest.raises(RuntimeError, match="leaf"):
        rope_fast(q.transpose(1, 2).contiguous(), k, cos, sin, inplace=True)


def test_non_contiguous_inputs_are_handled():
    """Any strides work (no copy): here the model's transposed layout and a slice with a gap in the last dim."""
    gen = torch.Generator().manual_seed(4)
    cos, sin = tables(1, 6, 8, torch.float32, False, gen)
    q = torch.randn(2, 6, 3, 16)[..., ::2].transpose(1, 2)  # (2, 3, 6, 8), stride 2 in the last dim
    k = torch.randn(2, 1, 6, 8)
    assert not q.is_contiguous()
    a, c = rope_fast(q, k, cos, sin)
    ra, rc = rope_reference(q, k, cos, sin)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, rc, rtol=1e-5, atol=1e-5)


def test_empty_sequence():
    gen = torch.Generator().manual_seed(0)
    cos, sin = tables(1, 0, 8, torch.float32, False, gen)
    a, c = rope_fast(torch.randn(2, 4, 0, 8), torch.randn(2, 2, 0, 8), cos, sin)
    assert a.shape == (2, 4, 0, 8) and c.shape == (2, 2, 0, 8)

"""One validation per op: the plain-PyTorch reference and the Triton path (interpreter on CPU) accept and refuse
the same inputs with the same error type — odd head_dim, silent broadcasting, fp64 tables, num_items <= 0,
softcap/eps <= 0 — and RoPE takes the 2-D (T, head_dim) cos/sin tables transformers and Liger pass.

The fuzz draws small inputs, valid or broken in one random way, in the dtypes both paths store (fp32, fp16);
float64 and non-contiguous memory are the Triton path's own limits and are left out on purpose."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minilora.kernels.cross_entropy import cross_entropy_fast, cross_entropy_reference
from minilora.kernels.fused_linear_ce import fused_linear_cross_entropy_fast, fused_linear_cross_entropy_reference
from minilora.kernels.rmsnorm import rms_norm_fast, rms_norm_reference
from minilora.kernels.rope import rope_fast, rope_reference
from minilora.kernels.swiglu import geglu_fast, geglu_reference, swiglu_fast, swiglu_reference

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DT = st.sampled_from([torch.float32, torch.float16])


def outcome(fn, *args, **kw):
    """('ok', result) or ('error', exception type)."""
    try:
        return "ok", fn(*args, **kw)
    except (ValueError, TypeError, RuntimeError) as e:
        return "error", type(e)


def same_outcome(ref, fast, atol):
    assert ref[0] == fast[0], (ref, fast)
    if ref[0] == "error":
        assert ref[1] is fast[1], (ref, fast)
        return
    for a, b in zip(*(r[1] if isinstance(r[1], tuple) else (r[1],) for r in (ref, fast))):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=atol)


# --- RoPE ----------------------------------------------------------------------------------------------------------
def rope_tables(T, hd, dtype, batch=None):
    ang = torch.arange(T).double()[:, None] / (10000 ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.cat([ang, ang], -1)[:, :hd]  # (T, hd); an odd hd (refused by RoPE) still gets a table of its size
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    if batch is not None:
        cos, sin = cos.expand(batch, T, hd).contiguous(), sin.expand(batch, T, hd).contiguous()
    return cos, sin


@pytest.mark.parametrize("fn", [rope_reference, rope_fast])
def test_rope_takes_2d_tables_like_transformers(fn):
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    cos2, sin2 = rope_tables(5, 8, torch.float32)
    cos3, sin3 = rope_tables(5, 8, torch.float32, batch=2)
    for a, b in zip(fn(q, k, cos2, sin2), rope_reference(q, k, cos3, sin3)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fn", [rope_reference, rope_fast])
@pytest.mark.parametrize("case, error", [("odd_head_dim", ValueError), ("fp64_tables", TypeError),
                                         ("wrong_T", ValueError), ("k_batch", ValueError)])
def test_rope_refusals(fn, case, error):
    hd = 7 if case == "odd_head_dim" else 8
    q, k = torch.randn(2, 4, 5, hd), torch.randn(1 if case == "k_batch" else 2, 2, 5, hd)
    cos, sin = rope_tables(6 if case == "wrong_T" else 5, hd, torch.float64 if case == "fp64_tables" else torch.float32)
    with pytest.raises(error):
        fn(q, k, cos, sin)


@FUZZ
@given(B=st.integers(1, 2), Hq=st.integers(1, 3), Hk=st.integers(1, 3), T=st.integers(1, 4),
       half=st.integers(1, 3), dtype=DT, odd=st.booleans(),
       table=st.sampled_from(["2d", "shared", "batch", "wrong_T", "wrong_hd", "other_dtype", "1d"]),
       k_dtype=st.booleans())
def test_rope_paths_agree(B, Hq, Hk, T, half, dtype, odd, table, k_dtype):
    hd = 2 * half + (1 if odd else 0)
    q, k = torch.randn(B, Hq, T, hd).to(dtype), torch.randn(B, Hk, T, hd).to(dtype)
    if k_dtype:
        k = k.to(torch.float16 if dtype == torch.float32 else torch.float32)
    tdt = (torch.float16 if dtype == torch.float32 else torch.float32) if table == "other_dtype" else dtype
    cos, sin = rope_tables(T + (table == "wrong_T"), hd + (table == "wrong_hd"), tdt,
                           batch=B if table == "batch" else None)
    if table == "shared":
        cos, sin = cos[None], sin[None]
    if table == "1d":
        cos, sin = cos[0], sin[0]
    same_outcome(outcome(rope_reference, q, k, cos, sin), outcome(rope_fast, q, k, cos, sin), atol=1e-2)


# --- RMSNorm -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [rms_norm_reference, rms_norm_fast])
@pytest.mark.parametrize("eps", [0.0, -1e-6, math.nan, math.inf])
def test_rms_norm_refuses_bad_eps(fn, eps):
    with pytest.raises(ValueError, match="eps"):
        fn(torch.randn(3, 8), torch.ones(8), eps)


@FUZZ
@given(rows=st.integers(1, 4), hidden=st.integers(1, 16), dtype=DT,
       w=st.sampled_from(["ok", "fp32", "short", "2d", "int"]), eps=st.sampled_from([1e-5, 1e-6, 0.0, -1.0]))
def test_rms_norm_paths_agree(rows, hidden, dtype, w, eps):
    x = torch.randn(rows, hidden).to(dtype)
    weight = {"ok": torch.randn(hidden).to(dtype), "fp32": torch.randn(hidden), "short": torch.randn(hidden + 1),
              "2d": torch.randn(1, hidden).to(dtype), "int": torch.ones(hidden, dtype=torch.int32)}[w]
    same_outcome(outcome(rms_norm_reference, x, weight, eps), outcome(rms_norm_fast, x, weight, eps), atol=2e-2)


# --- SwiGLU / GeGLU ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [swiglu_reference, swiglu_fast])
def test_glu_refuses_silent_broadcasting(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.randn(4, 8), torch.randn(1, 8))


@FUZZ
@given(n=st.integers(1, 5), m=st.integers(1, 9), dtype=DT, up=st.sampled_from(["ok", "bcast", "dtype", "int"]),
       approx=st.sampled_from(["none", "tanh", "fast"]), geglu=st.booleans())
def test_glu_paths_agree(n, m, dtype, up, approx, geglu):
    gate = torch.randn(n, m).to(dtype)
    u = {"ok": torch.randn(n, m).to(dtype), "bcast": torch.randn(1, m).to(dtype),
         "dtype": torch.randn(n, m).to(torch.float16 if dtype == torch.float32 else torch.float32),
         "int": torch.ones(n, m, dtype=torch.int64)}[up]
    if geglu:
        ref, fast = outcome(geglu_reference, gate, u, approx), outcome(geglu_fast, gate, u, approx)
    else:
        ref, fast = outcome(swiglu_reference, gate, u), outcome(swiglu_fast, gate, u)
    same_outcome(ref, fast, atol=2e-2)


# --- cross-entropy and its fused linear form -----------------------------------------------------------------------
@pytest.mark.parametrize("fn", [cross_entropy_reference, cross_entropy_fast])
@pytest.mark.parametrize("kw, error", [(dict(num_items=-3), ValueError), (dict(num_items=0), ValueError),
                                       (dict(num_items=torch.tensor(-2.0)), ValueError),
                                       (dict(softcap=0.0), ValueError), (dict(softcap=-30.0), ValueError),
                                       (dict(logit_scale=math.nan), ValueError), (dict(num_items="3"), TypeError)])
def test_cross_entropy_refusals(fn, kw, error):
    with pytest.raises(error):
        fn(torch.randn(4, 10), torch.tensor([1, 2, -100, 3]), **kw)


@FUZZ
@given(N=st.integers(1, 5), V=st.integers(2, 20), dtype=DT,
       labels=st.sampled_from(["ok", "out_of_range", "short", "float", "2d"]),
       num_items=st.sampled_from([None, 3, 0, -3, 2.5]), softcap=st.sampled_from([None, 30.0, 0.0, -1.0]),
       logit_scale=st.sampled_from([None, 0.5, 0.0, math.inf]), fused=st.booleans())
def test_cross_entropy_paths_agree(N, V, dtype, labels, num_items, softcap, logit_scale, fused):
    y = torch.randint(0, V, (N,))
    y = {"ok": y, "out_of_range": y + V, "short": y[:-1], "float": y.float(), "2d": y[None]}[labels]
    kw = dict(num_items=num_items, softcap=softcap, logit_scale=logit_scale)
    if fused:
        h, w = torch.randn(N, 8).to(dtype), torch.randn(V, 8).to(dtype)
        ref = outcome(fused_linear_cross_entropy_reference, h, w, y, **kw)
        fast = outcome(fused_linear_cross_entropy_fast, h, w, y, **kw)
    else:
        logits = torch.randn(N, V).to(dtype)
        ref = outcome(cross_entropy_reference, logits, y, **kw)
        fast = outcome(cross_entropy_fast, logits.clone(), y, **kw)
    same_outcome(ref, fast, atol=2e-2)

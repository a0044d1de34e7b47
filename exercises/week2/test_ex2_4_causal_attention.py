import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.checks import forbidden_calls
from exercises.conftest import exercise

pytestmark = pytest.mark.ex2_4
ex = exercise("ex2_4_causal_attention")

TOLERANCE = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-10}}
_SDPA = F.scaled_dot_product_attention  # the reference


def allowed_positions(T, causal, window):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = torch.ones(T, T, dtype=torch.bool)
    if causal:
        allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    return allowed


def reference(q, k, v, causal=True, window=None):
    """PyTorch's SDPA, with the key/value heads repeated for GQA."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    if window is None:
        return _SDPA(q, k, v, is_causal=causal)
    return _SDPA(q, k, v, attn_mask=allowed_positions(q.shape[-2], causal, window))


def by_hand(q, k, v, scale, allowed, expand="interleave", dim=-1):
    n_rep = q.shape[1] // k.shape[1]
    if expand == "interleave":
        k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    else:  # tiled: k0 k1 k0 k1 instead of k0 k0 k1 k1
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    scores = (q @ k.transpose(-2, -1) * scale).masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim) @ v


def diagnose(out, q, k, v, causal, window):
    """Name the usual mistake that this output matches, if any."""
    hd, T = q.shape[-1], q.shape[-2]
    if torch.isnan(out).any():
        rows = torch.isnan(out).any(-1).nonzero()[0].tolist()
        return (f"NaN in the output (first at batch {rows[0]}, head {rows[1]}, row {rows[2]}): a row whose every "
                "score is -inf gives 0/0 in the softmax — does each query keep key j = i (itself)?")
    allowed = allowed_positions(T, causal, window)
    n_rep = q.shape[1] // k.shape[1]
    mistakes = [
        ("the scores are not divided by sqrt(hd)", by_hand(q, k, v, 1.0, allowed)),
        ("the scores are divided by hd instead of sqrt(hd)", by_hand(q, k, v, 1 / hd, allowed)),
        ("no mask is applied: every query sees every key, the future included",
         by_hand(q, k, v, 1 / math.sqrt(hd), torch.ones(T, T, dtype=torch.bool))),
        ("the softmax runs over the queries (dim -2) instead of over the keys (dim -1)",
         by_hand(q, k, v, 1 / math.sqrt(hd), allowed, dim=-2)),
    ]
    if n_rep > 1 and k.shape[1] > 1:
        tiled = ("the KV heads are tiled (k0 k1 k0 k1) instead of repeated in place (k0 k0 k1 k1): query heads "
                 "0..n_rep-1 must share KV head 0 — use repeat_interleave on the head axis")
        mistakes.append((tiled, by_hand(q, k, v, 1 / math.sqrt(hd), allowed, expand="tile")))
    if window is not None:
        one_too_many = ("the window lets in one position too many (with window=W a query sees i - j < W, itself "
                        "included)")
        mistakes.append(("the window is ignored", by_hand(q, k, v, 1 / math.sqrt(hd), allowed_positions(T, causal, None))))
        mistakes.append((one_too_many, by_hand(q, k, v, 1 / math.sqrt(hd), allowed_positions(T, causal, window + 1))))
    expected = reference(q, k, v, causal, window)
    hints = [hint for hint, wrong in mistakes
             if not torch.allclose(wrong, expected, rtol=1e-6, atol=1e-6) and torch.allclose(out, wrong, rtol=1e-5, atol=1e-5)]
    if hints:  # on tiny shapes two mistakes can give the same numbers: name every one that fits
        return "your output matches a known mistake: " + "; or ".join(hints)
    return "compare your steps with the lesson's attention_by_hand: scores, mask, softmax over keys, weighted sum"


def check(q, k, v, causal=True, window=None):
    out = ex.attention(q, k, v, causal=causal, window=window)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape, \
        f"expected an output of q's shape {tuple(q.shape)} (B, nh, T, hd), got {getattr(out, 'shape', out)}"
    assert out.dtype == q.dtype, f"the output must keep q's dtype {q.dtype}, got {out.dtype}"
    expected = reference(q, k, v, causal, window)
    if not torch.allclose(out, expected, **TOLERANCE[q.dtype]):
        worst = (out - expected).abs().max().item()
        pytest.fail(f"attention(q {tuple(q.shape)}, k {tuple(k.shape)}, causal={causal}, window={window}) differs "
                    f"from SDPA by up to {worst:.3g} ({q.dtype}). {diagnose(out, q, k, v, causal, window)}")
    return out


shapes = {"B": st.integers(1, 2), "nkv": st.integers(1, 3), "n_rep": st.integers(1, 3), "T": st.integers(1, 11),
              "hd": st.integers(1, 9), "dtype": st.sampled_from([torch.float32, torch.float64]), "seed": st.integers(0, 2**16)}


def draw_qkv(B, nkv, n_rep, T, hd, dtype, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nkv * n_rep, T, hd, generator=g, dtype=dtype) * 2
    k, v = (torch.randn(B, nkv, T, hd, generator=g, dtype=dtype) * 2 for _ in range(2))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@settings(max_examples=30, deadline=None)
@given(**shapes, causal=st.booleans())
def test_matches_sdpa(B, nkv, n_rep, T, hd, dtype, seed, causal):
    check(*draw_qkv(B, nkv, n_rep, T, hd, dtype, seed), causal=causal)


@settings(max_examples=30, deadline=None)
@given(**shapes, window=st.integers(1, 12))
def test_sliding_window_matches_sdpa(B, nkv, n_rep, T, hd, dtype, seed, window):
    check(*draw_qkv(B, nkv, n_rep, T, hd, dtype, seed), causal=True, window=window)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_a_single_token_sees_only_itself(window):
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    out = check(q, k, v, causal=True, window=window)
    torch.testing.assert_close(out, v.repeat_interleave(2, 1), msg="with one token, its only weight is 1 on itself")


def test_no_query_attends_to_the_future():
    q, k, v = draw_qkv(1, 2, 2, 6, 8, torch.float64, seed=1)
    out = ex.attention(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 10.0  # change only the LAST position's key and value:
    v2[:, :, -1] -= 10.0  # every earlier query must not notice
    changed = (ex.attention(q, k2, v2, causal=True) - out).abs().amax(dim=(0, 1, 3))[:-1]  # per query row
    if (changed > 1e-9).any():
        i = int((changed > 1e-9).nonzero()[0])
        pytest.fail(f"row {i} attends to the future: changing the key/value at position {k.shape[2] - 1} changed "
                    f"its output — did you mask positions j > i?")


def test_the_window_forgets_old_positions():
    window, T = 3, 8
    q, k, v = draw_qkv(1, 1, 2, T, 4, torch.float64, seed=2)
    out = ex.attention(q, k, v, causal=True, window=window)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 0] += 10.0  # change only position 0: queries i >= window must not see it
    v2[:, :, 0] -= 10.0
    changed = (ex.attention(q, k2, v2, causal=True, window=window) - out).abs().amax(dim=(0, 1, 3))
    late = [i for i in range(window, T) if changed[i] > 1e-9]
    assert not late, (f"row {late[0]} still sees position 0, {late[0]} positions back: with window={window} a query "
                      f"sees only keys j with i - j < {window} (itself and the {window - 1} before it)")
    early = [i for i in range(window) if changed[i] <= 1e-9]
    assert not early, f"row {early[0]} should still see position 0 (it is within the window of {window})"


@settings(max_examples=15, deadline=None)
@given(**{**shapes, "dtype": st.just(torch.float64)}, window=st.one_of(st.none(), st.integers(1, 6)))
def test_gradients_match_sdpa(B, nkv, n_rep, T, hd, dtype, seed, window):
    q, k, v = draw_qkv(B, nkv, n_rep, T, hd, dtype, seed, requires_grad=True)
    q_ref, k_ref, v_ref = (t.detach().clone().requires_grad_() for t in (q, k, v))
    upstream = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
    check(q, k, v, causal=True, window=window).backward(upstream)  # the output first: a wrong one explains itself
    reference(q_ref, k_ref, v_ref, True, window).backward(upstream)
    for name, mine, ref in (("q", q, q_ref), ("k", k, k_ref), ("v", v, v_ref)):
        assert mine.grad is not None, f"no gradient reached {name}: keep every step in torch operations (no .detach())"
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-9, atol=1e-9,
                                   msg=lambda m, name=name: f"the output matches SDPA but the gradient of {name} does "
                                   f"not (window={window}): is a step done outside autograd (.detach(), .data, "
                                   f"numpy, an in-place edit of a tensor autograd saved)?\n{m}")


@pytest.mark.parametrize("causal, window", [(True, None), (False, None), (True, 1), (True, 3)])
@pytest.mark.parametrize("n_rep", [1, 2])
def test_written_by_hand_not_with_sdpa(causal, window, n_rep):
    """Every branch, and SDPA under any name: an alias, torch.ops.aten, a helper module, a fused kernel inside."""
    q, k, v = draw_qkv(1, 2, n_rep, 5, 8, torch.float32, seed=3)
    why = ("Exercise 2.4 asks for attention by hand: scaled_dot_product_attention was called "
           f"(causal={causal}, window={window}) — write the scores, mask, softmax and weighted sum yourself, "
           "in every branch")
    with forbidden_calls(("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention",
                          "multi_head_attention"), why):
        out = ex.attention(q, k, v, causal=causal, window=window)
    torch.testing.assert_close(out, reference(q, k, v, causal, window),
                               msg=lambda m: f"with SDPA hidden your attention differs from it (see test_matches_sdpa "
                               f"for a hint):\n{m}")


@pytest.mark.parametrize("bad, why", [
    ({"nh": 3, "nkv": 2}, "3 query heads, 2 KV heads"),
    ({"causal": False, "window": 2}, "a window without causal"),
    ({"window": 0}, "window 0"),
])
def test_bad_input_is_refused(bad, why):
    nh, nkv = bad.get("nh", 4), bad.get("nkv", 2)
    q, k, v = torch.randn(1, nh, 4, 8), torch.randn(1, nkv, 4, 8), torch.randn(1, nkv, 4, 8)
    with pytest.raises(ValueError):
        ex.attention(q, k, v, causal=bad.get("causal", True), window=bad.get("window"))

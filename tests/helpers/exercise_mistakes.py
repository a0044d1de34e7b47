"""Plausible wrong answers to the exercises, each one a learner could hand in.

Every entry of MISTAKES is (exercise test module, wrong answer, the test that must reject it, that test's
arguments, words its failure message must contain). tests/test_exercise_mistakes.py runs each test on its wrong
answer: the test must fail, and fail naming the mistake. Each answer is right everywhere except in its one mistake,
so a test that lets it through checks less than the stub promises.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from exercises.solutions import (
    ex2_4_causal_attention,
    ex4_3_dynamic_map,
    ex5_3_qkv_backward,
    ex6_1_global_token_loss,
)
from exercises.week4.test_ex4_4_adam8bit_update import MISTAKES as ADAM8BIT_MISTAKES
from exercises.week4.test_ex4_4_adam8bit_update import adam8bit_step

# ---- 2.4: scaled_dot_product_attention, which the exercise forbids -------------------------------------------
_KEPT_SDPA = F.scaled_dot_product_attention  # a reference held in ANOTHER module than the answer's


def _sdpa_with_gqa(sdpa, q, k, v, causal, window):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    if window is None:
        return sdpa(q, k, v, is_causal=causal)
    T = q.shape[-2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return sdpa(q, k, v, attn_mask=(j <= i) & (i - j < window))


def _sdpa_through_a_helper_module(q, k, v, causal=True, window=None):
    ex2_4_causal_attention.attention(q[:, :1], k[:, :1], v[:, :1], causal, window)  # argument checks, by hand
    return _sdpa_with_gqa(_KEPT_SDPA, q, k, v, causal, window)


def _sdpa_through_torch_ops(q, k, v, causal=True, window=None):
    ex2_4_causal_attention.attention(q[:, :1], k[:, :1], v[:, :1], causal, window)
    return _sdpa_with_gqa(torch.ops.aten.scaled_dot_product_attention, q, k, v, causal, window)


def _sdpa_in_one_branch(q, k, v, causal=True, window=None):
    if not causal:  # by hand everywhere else
        return _sdpa_with_gqa(F.scaled_dot_product_attention, q, k, v, causal, window)
    return ex2_4_causal_attention.attention(q, k, v, causal, window)


def _sdpa_inside_multihead_attention(q, k, v, causal=True, window=None):
    if causal or window is not None:
        return ex2_4_causal_attention.attention(q, k, v, causal, window)
    # nn.functional.multi_head_attention_forward with identity projections calls SDPA itself when no weights are
    # asked for: the ban must see it even though the answer never names SDPA
    B, nh, T, hd = q.shape
    n_rep = nh // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    flat = [t.transpose(1, 2).reshape(B, T, nh * hd).transpose(0, 1) for t in (q, k, v)]  # (T, B, C)
    eye = torch.eye(nh * hd, dtype=q.dtype)
    out, _ = F.multi_head_attention_forward(
        *flat, nh * hd, nh, None, None, None, None, False, 0.0, eye, None, training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye)
    return out.transpose(0, 1).reshape(B, T, nh, hd).transpose(1, 2)


# ---- 4.3: a value exactly on a midpoint rounded UP, although the stub says a tie goes to the lower level --------
def _ties_round_up(block, code):
    idx, absmax = ex4_3_dynamic_map.quantize_block(block, code)
    if absmax == 0:
        return idx, absmax
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(block * (1.0 / absmax), midpoints, right=True).to(torch.uint8), absmax


# ---- 4.4: the usual slips in one step of 8-bit Adam ------------------------------------------------------------
def _adam8bit_with(mistake):
    @torch.no_grad()
    def adam8bit_update(*args, **kwargs):
        adam8bit_step(*args, **kwargs, mistake=mistake)
    return SimpleNamespace(adam8bit_update=adam8bit_update)


# ---- 5.3: the full-size product formed transposed; autograd inside --------------------------------------------
def _full_product_transposed(x, projections, d_outs):
    dx, dAs, dBs = None, [], []
    for (W, A, B, s), dy in zip(projections, d_outs):
        AtBt = A.T @ B.T  # (C, out): B A again, only transposed — as big as W
        dAs.append(s * ((dy @ B).T @ x))
        dBs.append(s * (dy.T @ (x @ A.T)))
        if dx is None:
            dx = dy @ W
        else:
            dx.addmm_(dy, W)
        dx.addmm_(dy, AtBt.T, alpha=s)
    return dx, dAs, dBs


_KEPT_GRAD = torch.autograd.grad  # imported under another name before any test looks


def _autograd_for_dA_dB(x, projections, d_outs, grad=lambda *a: torch.autograd.grad(*a)):
    dx, _, _ = ex5_3_qkv_backward.qkv_backward(x, projections, d_outs)
    dAs, dBs = [], []
    for (_, A, B, s), dy in zip(projections, d_outs):
        A, B = A.detach().requires_grad_(), B.detach().requires_grad_()
        with torch.enable_grad():
            dA, dB = grad(s * (x @ A.T) @ B.T, (A, B), dy)
        dAs.append(dA)
        dBs.append(dB)
    return dx, dAs, dBs


# ---- 6.1: a NaN loss on a rank without tokens, and the classic scalings ----------------------------------------
def _nan_on_an_empty_rank(token_losses):
    n, world = sum(t.numel() for t in token_losses), len(token_losses)
    return [world * t.mean() * t.numel() / n for t in token_losses]  # mean of nothing is NaN


def _rank_losses(scale):
    def rank_losses(token_losses):
        return [scale(t, sum(u.numel() for u in token_losses), len(token_losses)) for t in token_losses]
    return SimpleNamespace(global_mean=ex6_1_global_token_loss.global_mean, rank_losses=rank_losses)


def _with(solution, **replaced):
    return SimpleNamespace(**{**vars(solution), **replaced})


T24, T43, T44 = "exercises/week2/test_ex2_4_causal_attention.py", "exercises/week4/test_ex4_3_dynamic_map.py", \
    "exercises/week4/test_ex4_4_adam8bit_update.py"
T53, T61 = "exercises/week5/test_ex5_3_qkv_backward.py", "exercises/week6/test_ex6_1_global_token_loss.py"
SDPA_BANNED = "scaled_dot_product_attention was called"

MISTAKES = [
    # (test file, name, wrong answer, test function, its arguments, words the failure must contain)
    (T24, "SDPA kept in another module", _with(ex2_4_causal_attention, attention=_sdpa_through_a_helper_module),
     "test_written_by_hand_not_with_sdpa", {"causal": True, "window": 3, "n_rep": 2}, SDPA_BANNED),
    (T24, "SDPA through torch.ops.aten", _with(ex2_4_causal_attention, attention=_sdpa_through_torch_ops),
     "test_written_by_hand_not_with_sdpa", {"causal": True, "window": None, "n_rep": 1}, SDPA_BANNED),
    (T24, "SDPA in the non-causal branch only", _with(ex2_4_causal_attention, attention=_sdpa_in_one_branch),
     "test_written_by_hand_not_with_sdpa", {"causal": False, "window": None, "n_rep": 2}, SDPA_BANNED),
    (T24, "SDPA inside multi_head_attention_forward",
     _with(ex2_4_causal_attention, attention=_sdpa_inside_multihead_attention),
     "test_written_by_hand_not_with_sdpa", {"causal": False, "window": None, "n_rep": 1}, SDPA_BANNED),
    (T43, "a tie rounded up", _with(ex4_3_dynamic_map, quantize_block=_ties_round_up),
     "test_a_value_on_a_midpoint_goes_to_the_lower_level", {"signed": True}, "tie goes to the LOWER level"),
    (T53, "B A formed transposed", _with(ex5_3_qkv_backward, qkv_backward=_full_product_transposed),
     "test_one_dx_buffer_and_no_BA", {}, "that is B A"),
    (T53, "autograd for dA and dB", _with(ex5_3_qkv_backward, qkv_backward=_autograd_for_dA_dB),
     "test_no_autograd", {}, "no autograd"),
    (T53, "autograd under another name",
     _with(ex5_3_qkv_backward, qkv_backward=lambda *a: _autograd_for_dA_dB(*a, grad=_KEPT_GRAD)),
     "test_no_autograd", {}, "no autograd"),
    (T61, "NaN on a rank with no tokens", _with(ex6_1_global_token_loss, rank_losses=_nan_on_an_empty_rank),
     "test_ranks_averaged_like_ddp_give_the_one_process_gradient", {"sizes": [4, 0, 6, 3]},
     "rank 1 holds no tokens"),
    (T61, "mean of means", _rank_losses(lambda t, n, w: t.sum() / max(t.numel(), 1)),
     "test_ranks_averaged_like_ddp_give_the_one_process_gradient", {"sizes": [3, 7]}, "its OWN token count"),
    (T61, "DDP's division by W not undone", _rank_losses(lambda t, n, w: t.sum() / n),
     "test_ranks_averaged_like_ddp_give_the_one_process_gradient", {"sizes": [3, 7]}, "multiply by the number of"),
    (T61, "summed, never divided", _rank_losses(lambda t, n, w: t.sum()),
     "test_ranks_averaged_like_ddp_give_the_one_process_gradient", {"sizes": [3, 7]}, "never divided"),
    (T61, "every rank divides by its own count times W", _rank_losses(lambda t, n, w: w * t.sum() / (w * max(t.numel(), 1))),
     "test_ranks_averaged_like_ddp_give_the_one_process_gradient", {"sizes": [1, 8, 2]}, "its OWN token count"),
    (T61, "global mean of a rank with no tokens is NaN",
     _with(ex6_1_global_token_loss, global_mean=lambda ls: torch.stack([t.mean() for t in ls]).nanmean()),
     "test_global_mean_is_the_one_process_loss", {"sizes": [4, 0, 6, 3]}, "mean of the ranks' means"),
] + [
    (T44, f"8-bit Adam: {m}", _adam8bit_with(m), "test_three_steps_follow_the_library", {"weight_decay": 0.1},
     m) for m in ADAM8BIT_MISTAKES
]

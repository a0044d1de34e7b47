"""Exercise 2.4 — reference solution: scores, mask, softmax and weighted sum written out."""
import math

import torch


def attention(q, k, v, causal=True, window=None):
    nh, nkv = q.shape[1], k.shape[1]
    if nh % nkv:
        raise ValueError(f"{nh} query heads cannot be shared evenly by {nkv} key/value heads: nh must be a "
                         "multiple of nkv")
    if window is not None and not causal:
        raise ValueError("a sliding window only makes sense for causal attention: pass causal=True")
    if window is not None and window < 1:
        raise ValueError(f"window={window} would hide every key, even the token itself: use window >= 1")
    n_rep = nh // nkv
    k = k.repeat_interleave(n_rep, dim=1)  # (B, nh, T, hd): KV head g serves query heads g·n_rep .. g·n_rep+n_rep-1
    v = v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
    T, S = q.shape[-2], k.shape[-2]
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(S, device=q.device)[None, :]
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = j <= i
        if window is not None:
            allowed = allowed & (i - j < window)
    scores = scores.masked_fill(~allowed, float("-inf"))  # exp(-inf) = 0: forbidden keys get no weight
    return scores.softmax(dim=-1) @ v  # (B, nh, T, hd)

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Week 2 — Attention itself
#
# Every decoder layer starts with attention: each token looks back at the tokens before it and takes a weighted
# average of what they carry. The rest of the course assumes it; this lesson builds it by hand, checks the hand-made
# version against PyTorch's fused kernel and against minilora's own layer, and then measures the one property that
# decides how long a context fits in memory: the naive form holds a score for every *pair* of tokens, the fused
# kernels do not.
#
# **Goals.** By the end of this lesson you can
#
# 1. write multi-head attention in four lines of plain PyTorch — scores, mask, softmax, weighted sum — and show it
#    equals `F.scaled_dot_product_attention` (SDPA) and minilora's `LlamaAttention`;
# 2. draw the causal mask and Mistral's sliding-window mask, and read them off the model's own code;
# 3. explain grouped-query attention (GQA) as "repeat the key/value heads" and compute what it saves in the KV cache;
# 4. measure, on your CPU, how the memory kept for the backward grows with the context length T for the naive
#    path and for SDPA, and say why one grows as T² and the other as T;
# 5. explain the online softmax that lets a fused kernel never hold a whole row of scores.
#
# **Where this lives in Unsloth, and in minilora.** Attention has no file of its own in Unsloth; it lives inside
# each model's patched forward:
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/models/llama.py` → `LlamaAttention_fast_forward` | q/k/v projections, RoPE, KV cache, GQA, then flash-attention, xformers or SDPA (whichever is installed) | `minilora/models/llama.py` → `LlamaAttention.forward` (SDPA) |
# | `unsloth/models/llama.py` → the causal mask handed to the kernel | which keys a query may see | `minilora/models/llama.py` → `LlamaForCausalLM.attention_mask`, `allowed_positions` |
# | `unsloth/models/mistral.py` → `MistralAttention_fast_forward` | the same with a sliding window | `minilora/models/mistral.py` → `MistralForCausalLM.allowed_positions` |

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from minilora.kernels.rope import rope_reference
from minilora.memory import SavedTensorMeter, storage_key
from minilora.models import LlamaForCausalLM, MistralForCausalLM, ModelConfig, build_model, catalogue_config
from minilora.prose import claim
from minilora.show import show

LESSON_START = time.perf_counter()
torch.manual_seed(0)
MiB, GiB = 2**20, 2**30

# %% [markdown]
# ## 1. The library's attention, read first
#
# Here is the layer every minilora model uses. Read it with the shapes in mind: B batch, T tokens, nh query heads,
# nkv key/value heads, hd the head dimension.

# %%
from minilora.models.llama import LlamaAttention

show(LlamaAttention.forward)

# %% [markdown]
# Three projections turn each token's hidden vector into a **query** ("what am I looking for?"), a **key** ("what
# do I offer?") and a **value** ("what do I hand over if chosen?"), split into heads. RoPE rotates q and k by their
# positions (week 2's model-family lesson). Then one call does the attention itself:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{hd}} + M\Big)\,V,$$
#
# where $M$ is 0 where a query may look and $-\infty$ where it may not. Dividing by $\sqrt{hd}$ keeps the scores'
# spread independent of the head size: a dot product of hd unit-variance numbers has variance hd, and a softmax of
# large numbers is nearly one-hot, with vanishing gradients. Measured on random vectors:

# %%
for hd in (8, 64, 512):
    dots = (torch.randn(20000, hd) * torch.randn(20000, hd)).sum(-1)
    print(f"hd={hd:4d}: std of q·k = {dots.std():6.2f} (sqrt(hd) = {math.sqrt(hd):5.2f}); "
          f"after dividing by sqrt(hd): {(dots / math.sqrt(hd)).std():.2f}")

# %% [markdown]
# ## 2. Attention by hand, checked twice
#
# The whole computation, written out. `allowed` is a boolean matrix (True = may attend); forbidden scores become
# $-\infty$, whose exponential is exactly 0, so they get no weight at all.

# %%
def attention_by_hand(q, k, v, allowed):
    """q (B, nh, T, hd); k, v (B, nh, S, hd) with as many heads as q; allowed: bool broadcastable to (.., T, S)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, S): one score per (query, key) pair
    scores = scores.masked_fill(~allowed, float("-inf"))  # forbidden pairs: exp(-inf) = 0 weight
    weights = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
    return weights @ v  # (B, nh, T, hd): a weighted average of value vectors


B, T, nh, hd = 2, 7, 3, 16
q, k, v = (torch.randn(B, nh, T, hd, dtype=torch.float64) for _ in range(3))
causal = torch.ones(T, T, dtype=torch.bool).tril()  # query i sees keys j <= i
mine = attention_by_hand(q, k, v, causal)
sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print(f"max |by hand − SDPA| = {(mine - sdpa).abs().max():.2e}  (float64)")

# %% [markdown]
# Now the same against minilora's layer, on a tiny model from the registry with random weights: 4 query heads
# sharing 2 key/value heads (so GQA is in play, section 4 explains it). We redo each step of `forward` by hand —
# projections, RoPE, repeating the KV heads, attention, output projection — and compare.

# %%
tiny = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=2)
model = build_model(tiny, dtype=torch.float64)
layer = model.model.layers[0].self_attn
x = torch.randn(B, T, tiny.hidden_size, dtype=torch.float64)
positions = torch.arange(T).expand(B, T)
cos, sin = model.model.rotary_emb(positions, x.dtype)  # (B, T, hd)
mask, is_causal = model.attention_mask(T, 0, None, x.device)
print(f"the model's mask for a plain batch: mask={mask}, is_causal={is_causal}")


def qkv_by_hand(attn, x, cos, sin):
    """The layer's projections and RoPE, step by step: q (B, nh, T, hd), k and v (B, nkv, T, hd)."""
    B, T, _ = x.shape
    hd = attn.config.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)  # (B, nh, T, hd)
    k = (x @ attn.k_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)  # (B, nkv, T, hd)
    v = (x @ attn.v_proj.weight.T).view(B, T, -1, hd).transpose(1, 2)  # (B, nkv, T, hd)
    q, k = rope_reference(q, k, cos, sin)
    return q, k, v


q, k, v = qkv_by_hand(layer, x, cos, sin)
k, v = k.repeat_interleave(tiny.n_rep, dim=1), v.repeat_interleave(tiny.n_rep, dim=1)  # (B, 4, T, hd)
y = attention_by_hand(q, k, v, causal)
by_hand = y.transpose(1, 2).reshape(B, T, -1) @ layer.o_proj.weight.T  # (B, T, C)
with torch.no_grad():
    library = layer(x, cos, sin, mask, is_causal, None)
print(f"max |by hand − LlamaAttention| = {(by_hand - library).abs().max():.2e}  (float64)")

# %% [markdown]
# For a plain batch the model passes **no mask at all** — just `is_causal=True`, which lets SDPA build the causal
# rule inside the kernel instead of reading a (T, T) tensor. A mask tensor appears only when something else
# applies: padding, packed sequences, a cache with several new tokens, or a sliding window. This is where the
# model decides, and the rule Mistral overrides:

# %%
show(LlamaForCausalLM.allowed_positions)
show(LlamaForCausalLM.attention_mask)
show(MistralForCausalLM)

# %% [markdown]
# ## 3. The masks, drawn
#
# We ask both models for their rule on T = 10 positions; the Mistral model gets a window of 4 (a token sees
# itself and the 3 before it). Dark = may attend. Rows are queries, columns keys.

# %%
T_draw, window = 10, 4
llama = build_model(ModelConfig(**{**tiny.to_dict(), "model_type": "llama"}))
mistral = build_model(ModelConfig(**{**tiny.to_dict(), "model_type": "mistral", "sliding_window": window}))
q_pos, k_pos = torch.arange(T_draw)[:, None], torch.arange(T_draw)[None, :]
causal_rule = llama.allowed_positions(q_pos, k_pos)
window_mask, _ = mistral.attention_mask(T_draw, 0, None, "cpu")  # (1, 1, T, T): longer than the window → a tensor
fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
for ax, m, title in zip(axes, (causal_rule, window_mask[0, 0]),
                        ("Llama: causal", f"Mistral: sliding window {window}")):
    ax.imshow(m.numpy(), cmap="Greys", vmin=0, vmax=1)
    ax.set_title(title)
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
plt.tight_layout()
plt.show()
print(f"keys seen per query — causal: {causal_rule.sum(1).tolist()}")
print(f"keys seen per query — window: {window_mask[0, 0].sum(1).tolist()}")

# %% [markdown]
# The causal row i sees i + 1 keys, so the work grows with the square of T; the windowed row never sees more than
# the window, so its work grows linearly. Information still travels further than one window: layer after layer,
# each step reaches back one more window. For Mistral-7B's catalogue configuration:

# %%
m7 = catalogue_config("mistral-7b")
reach = m7.num_hidden_layers * (m7.sliding_window - 1)
print(f"window {m7.sliding_window:,} tokens x {m7.num_hidden_layers} layers: the last layer can draw on tokens up to "
      f"{reach:,} positions back, though each single attention looks at most {m7.sliding_window - 1:,} back")

# %% [markdown]
# The hand-written attention with this mask equals Mistral's own layer (which receives the mask above):

# %%
x = torch.randn(1, T_draw, tiny.hidden_size)
cos, sin = mistral.model.rotary_emb(torch.arange(T_draw)[None], x.dtype)
attn = mistral.model.layers[0].self_attn
q, k, v = qkv_by_hand(attn, x, cos, sin)
n_rep = mistral.config.n_rep
y = attention_by_hand(q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1), window_mask)
by_hand = y.transpose(1, 2).reshape(1, T_draw, -1) @ attn.o_proj.weight.T
with torch.no_grad():
    library = attn(x, cos, sin, window_mask, False, None)
print(f"max |by hand − Mistral's layer| = {(by_hand - library).abs().max():.2e}  (float32)")

# %% [markdown]
# ## 4. Grouped-query attention: fewer key/value heads
#
# With GQA, nh query heads share nkv < nh key/value heads: each KV head serves a group of
# n_rep = nh / nkv consecutive query heads. The simplest implementation copies each KV head n_rep times so the
# shapes line up — `repeat_interleave` along the head axis (k0 k0 k1 k1, not k0 k1 k0 k1: query heads 0 and 1 form
# the first group). SDPA can also do the grouping itself (`enable_gqa=True`) without making the copies; minilora's
# layer takes that route when there is no mask tensor and repeats the heads otherwise (its comment in section 1
# says why). Both give the same numbers:

# %%
nh, nkv, T, hd = 8, 2, 6, 16
q = torch.randn(1, nh, T, hd)
k, v = torch.randn(1, nkv, T, hd), torch.randn(1, nkv, T, hd)
n_rep = nh // nkv
repeated = F.scaled_dot_product_attention(q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1),
                                          is_causal=True)
grouped = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
print(f"n_rep = {nh} / {nkv} = {n_rep}; query head h uses KV head h // n_rep: "
      f"{[h // n_rep for h in range(nh)]}")
print(f"max |repeat_interleave − enable_gqa| = {(repeated - grouped).abs().max():.2e}")

# %% [markdown]
# The projections are smaller, but the real prize is at inference: the **KV cache** keeps k and v of every past
# token, in every layer. Its size per token is 2 (k and v) × layers × nkv × hd × bytes per number. For Llama-3-8B
# (from the catalogue) in bf16:

# %%
def kv_bytes_per_token(cfg, n_kv, bytes_per=2):
    return 2 * cfg.num_hidden_layers * n_kv * cfg.head_dim * bytes_per  # k and v, every layer, bf16


l3 = catalogue_config("llama-3-8b")
context = l3.max_position_embeddings
full_mha = kv_bytes_per_token(l3, l3.num_attention_heads)
gqa = kv_bytes_per_token(l3, l3.num_key_value_heads)
print(f"Llama-3-8B: {l3.num_attention_heads} query heads, {l3.num_key_value_heads} KV heads, hd {l3.head_dim}, "
      f"{l3.num_hidden_layers} layers")
print(f"KV cache per token: {full_mha / 1024:.0f} KiB if every head had its own K/V, {gqa / 1024:.0f} KiB with GQA")
claim("at its {context:,}-token context, one sequence: {mha:.2f} GiB vs {gqa:.2f} GiB — GQA saves {saved:.2f} GiB "
      "({times:.0f}x smaller)", gqa < full_mha, context=context, mha=full_mha * context / GiB,
      gqa=gqa * context / GiB, saved=(full_mha - gqa) * context / GiB, times=full_mha / gqa)

# %% [markdown]
# ## 5. Why memory is O(T²) on the naive path and O(T) in SDPA — measured
#
# `attention_by_hand` builds the score matrix (B, nh, T, T) and its softmax; autograd must keep the softmax for the
# backward. SDPA's fused kernels (flash-attention style; on CPU PyTorch runs its own flash kernel) walk over the
# keys in blocks and keep only the output and one log-sum-exp number per query row — the backward recomputes the
# scores block by block.
#
# We measure what each leaves behind for the backward with the library's `SavedTensorMeter` (saved-tensor hooks,
# counting distinct storages), leaving out q, k and v themselves (they exist either way). B = 1, 4 heads, hd 64,
# fp32, causal, T from 256 to 4096.

# %%
def kept_for_backward(fn, q, k, v):
    """Bytes of the storages autograd saves while fn runs, other than q, k and v themselves."""
    inputs = {storage_key(t) for t in (q, k, v)}
    with SavedTensorMeter() as meter:
        fn(q, k, v)
    return sum(n for key, n in meter.storages.items() if key not in inputs)


def naive(q, k, v):
    T = q.shape[-2]
    return attention_by_hand(q, k, v, torch.ones(T, T, dtype=torch.bool).tril())


def fused(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


H, HD = 4, 64
lengths = [256, 512, 1024, 2048, 4096]
measured = {"naive": [], "SDPA": []}
for T in lengths:
    q, k, v = (torch.randn(1, H, T, HD, requires_grad=True) for _ in range(3))
    measured["naive"].append(kept_for_backward(naive, q, k, v))
    measured["SDPA"].append(kept_for_backward(fused, q, k, v))
sdpa_node = type(fused(q, k, v).grad_fn).__name__
del q, k, v
print(f"SDPA's backward on this machine: {sdpa_node}")

print(f"{'T':>6} {'naive MiB':>10} {'formula':>10} {'SDPA MiB':>9} {'formula':>9} {'naive/SDPA':>11}")
for T, nb, sb in zip(lengths, measured["naive"], measured["SDPA"]):
    naive_formula = H * T * T * 4 + T * T  # fp32 softmax (B, nh, T, T) + the bool (T, T) mask
    sdpa_formula = H * T * HD * 4 + H * T * 4  # fp32 output (B, nh, T, hd) + a log-sum-exp per row
    print(f"{T:6d} {nb / MiB:10.2f} {naive_formula / MiB:10.2f} {sb / MiB:9.3f} {sdpa_formula / MiB:9.3f} "
          f"{nb / sb:11.1f}")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, marker in (("naive", "o"), ("SDPA", "s")):
    ax.loglog(lengths, measured[name], marker=marker, label=name, base=2)
ax.set_xlabel("context length T (tokens)")
ax.set_ylabel("bytes kept for backward (excl. q, k, v)")
ax.set_title(f"attention memory, B=1, {H} heads, hd {HD}, fp32, CPU")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
plt.show()

slope = {name: np.polyfit(np.log(lengths[-3:]), np.log(measured[name][-3:]), 1)[0] for name in measured}
n_last, s_last = measured["naive"][-1], measured["SDPA"][-1]
ratio = n_last / s_last
print(f"On log axes a line of slope p means bytes ∝ T^p. Fitted over the last three lengths: naive p = "
      f"{slope['naive']:.2f}, SDPA p = {slope['SDPA']:.2f}.")
claim("At T = {T:,} the naive path keeps {naive:.1f} MiB and SDPA {sdpa:.2f} MiB: SDPA keeps {times:.0f}x less",
      ratio > 1, T=lengths[-1], naive=n_last / MiB, sdpa=s_last / MiB, times=ratio)
doubling = measured["naive"][-1] / measured["naive"][-2], measured["SDPA"][-1] / measured["SDPA"][-2]
print(f"Doubling T from {lengths[-2]:,} to {lengths[-1]:,} multiplied the naive bytes by {doubling[0]:.2f} and "
      f"SDPA's by {doubling[1]:.2f}.")

# %% [markdown]
# The table's formula columns are the whole story: the naive path pays for nh·T² softmax weights (plus the mask),
# SDPA for nh·T·hd output values plus nh·T row statistics. At the scale of a real model the T² term is what a
# fused kernel avoids keeping. One Llama-3-8B layer in bf16, B = 1, at its full context:

# %%
T8 = l3.max_position_embeddings
scores_one_layer = l3.num_attention_heads * T8 * T8 * 2
output_one_layer = l3.num_attention_heads * T8 * l3.head_dim * 2
print(f"score matrix: {l3.num_attention_heads} x {T8:,} x {T8:,} x 2 bytes = {scores_one_layer / GiB:.1f} GiB per "
      f"layer, {scores_one_layer * l3.num_hidden_layers / GiB:.0f} GiB over {l3.num_hidden_layers} layers if kept for"
      f" the backward; the attention output is {output_one_layer / MiB:.0f} MiB per layer")

# %% [markdown]
# ## 6. The trick that makes it possible: online softmax
#
# A softmax seems to need the whole row at once — the maximum (for stability) and the sum of exponentials come
# before any weight is known. The fused kernels instead keep three running quantities per query while they walk
# over blocks of keys: the running maximum $m$, the running denominator $\ell = \sum e^{s_j - m}$, and the running
# numerator $\mathrm{acc} = \sum e^{s_j - m} v_j$. When a new block raises the maximum to $m'$, the old sums are
# simply rescaled by $e^{m - m'}$. This is the same running log-sum-exp that week 3's cross-entropy lesson derives
# in detail (`lessons/week3_cross_entropy.py`, section 2, and exercise 3.3). One query row, block by block:

# %%
T_row, block = 4096, 512
s = torch.randn(T_row, dtype=torch.float64) * 5  # one query's scores over T_row keys
values = torch.randn(T_row, 8, dtype=torch.float64)
m, denom, acc = torch.tensor(float("-inf"), dtype=torch.float64), 0.0, torch.zeros(8, dtype=torch.float64)
for start in range(0, T_row, block):
    s_blk = s[start:start + block]
    m_new = torch.maximum(m, s_blk.max())
    rescale = torch.exp(m - m_new)  # old sums were relative to the old maximum
    p = torch.exp(s_blk - m_new)
    denom = denom * rescale + p.sum()
    acc = acc * rescale + p @ values[start:start + block]
    m = m_new
online = acc / denom
print(f"max |online − softmax(s) @ V| = {(online - s.softmax(0) @ values).abs().max():.2e}; scores held at once: "
      f"{block:,} instead of {T_row:,}")

# %% [markdown]
# Flash attention runs this loop for a tile of queries at a time on the GPU's on-chip memory, so it never needs
# the whole (T, T) matrix. What you measured above on the CPU is the other half of the story: what SDPA saves for
# the backward grows as O(T). This lesson took
# the time printed below on this machine:

# %%
print(f"lesson runtime: {time.perf_counter() - LESSON_START:.1f} s with torch {torch.__version__} on "
      f"{torch.get_num_threads()} CPU threads")

# %% [markdown]
# ## Exercise
#
# - **Exercise 2.4** — `exercises/week2/ex2_4_causal_attention.py`: write
#   `attention(q, k, v, causal=True, window=None)` by hand — grouped-query (k and v may have fewer heads than q),
#   causal, with an optional sliding window — without calling SDPA. The tests compare it with SDPA on odd shapes
#   in fp32 and fp64, including T = 1 and windows, outputs and gradients.
#   `pytest exercises -m ex2_4`
#
# ## Journal prompt
#
# 1. Write the attention formula from memory, then annotate each tensor with its shape for B = 2, nh = 32, nkv = 8,
#    T = 2048, hd = 128. Which of those tensors is the largest, and by how much?
# 2. Copy the plot's two slopes and the ratio at your largest T into your journal. From the formula columns,
#    predict both byte counts and their ratio at T = 32,768, and compare the naive one with your laptop's memory.
# 3. Mistral's sliding window and GQA both shrink something. Say what each shrinks (compute, the scores, the KV
#    cache), and which of them SDPA's fused kernel already makes unnecessary for training memory.

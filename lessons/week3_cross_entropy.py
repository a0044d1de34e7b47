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
# # Week 3 — Kernels II: cross-entropy over 128k tokens of vocabulary
#
# The last layer of a language model turns every token's hidden state into one score per vocabulary entry. With
# Llama-3's 128,256-entry vocabulary those scores — the *logits* — are the largest tensor of a fine-tuning step, and
# the textbook way of turning them into a loss allocates several more buffers of their size. This lesson measures
# them, then builds the
# cure in three parts: a one-pass **running log-sum-exp**, **chunking** a long row over several programs, and the
# **fused linear + cross-entropy** that never holds all the logits at once.
#
# **Goals.** By the end you can
#
# 1. compute how many GiB the logits, their fp32 copy and their gradient take for a given batch and vocabulary;
# 2. derive the online log-sum-exp update and say why it never overflows;
# 3. explain why the gradient of cross-entropy can be written into the logits' own memory;
# 4. trace the fused linear + cross-entropy loop and pick its chunk size from a memory budget;
# 5. read the recorded GPU benchmark against eager PyTorch, `torch.compile` and Liger-Kernel.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth (the learning plan's Phase 3) | what it does | minilora |
# |---|---|---|
# | `unsloth/kernels/cross_entropy_loss.py` | cross-entropy kernels: forward with log-sum-exp, backward in place, chunked for big vocabularies, logit scaling and soft-capping | `minilora/kernels/cross_entropy.py` → `_ce_forward_kernel`, `_ce_backward_kernel`, `CrossEntropyFunction`, `cross_entropy_fast` |
# | (fused linear + CE: Liger-Kernel's idea, also in Unsloth's companion library) | loss straight from hidden states, chunked over tokens | `minilora/kernels/fused_linear_ce.py` → `FusedLinearCrossEntropyFunction` |
# | the loss call in Unsloth's patched model forward | picks the fast loss | `minilora/ops.py` → `cross_entropy`, `fused_linear_cross_entropy`; `LlamaForCausalLM(…, return_logits=False)` |
#
# The cell below sets up the Triton interpreter (so the kernels run on a laptop) and prints each file's first line.

# %%
import ast
import os
import pathlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is first imported

import matplotlib.pyplot as plt

for path in ["minilora/kernels/cross_entropy.py", "minilora/kernels/fused_linear_ce.py", "minilora/ops.py"]:
    doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
    print(f"{path:36s} {doc.splitlines()[0]}")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GiB = 2**30

# %% [markdown]
# ## 1. Why the logits dominate memory
#
# Take Llama-3-8B fine-tuned at batch 4 × 2048 tokens: N = 8192 token positions, hidden size 4096, vocabulary
# V = 128,256. The cell computes the size of each tensor the loss touches, next to things we usually think of as
# big.

# %%
from minilora.memory import lora_param_count
from minilora.models import catalogue_config
from minilora.prose import compare
from minilora.show import show

llama8b = catalogue_config("llama-3-8b")
N, H, V = 4 * 2048, llama8b.hidden_size, llama8b.vocab_size
n_lora = lora_param_count(llama8b, r=16)  # r·(in + out) for each of the 7 projections of every layer
print(f"LoRA r=16 on all 7 projections of {llama8b.num_hidden_layers} layers: {n_lora:,} parameters")
sizes = {
    "hidden states entering lm_head (N, H) bf16": N * H * 2,
    "lm_head weight (V, H) bf16": V * H * 2,
    "LoRA r=16 on all 7 projections of 32 layers (bf16)": n_lora * 2,
    "logits (N, V) bf16": N * V * 2,
    "  + fp32 copy made by logits.float()": N * V * 4,
    "  + fp32 gradient of that copy": N * V * 4,
    "  + bf16 gradient of the logits": N * V * 2,
}
for name, nbytes in sizes.items():
    print(f"{name:55s} {nbytes / GiB:8.3f} GiB")
textbook = sum(v for k, v in sizes.items() if k.startswith(("logits", "  +")))
print(f"\nthe textbook loss path holds up to {textbook / GiB:.1f} GiB for the loss alone, "
      f"{textbook / sizes['hidden states entering lm_head (N, H) bf16']:.0f}x the hidden states it came from")
print(f"the logits alone are V / H = {V / H:.1f}x the hidden states")

# %% [markdown]
# The logits are V / H times bigger than the hidden states they come from (printed above), and the reference
# implementation (which minilora keeps for CPU runs) upcasts them to fp32 first:

# %%
from benchmarks.harness import COPY_IMPL, latest, load_results
from minilora.kernels import cross_entropy as ce
from minilora.kernels import fused_linear_ce as flce

show(ce.cross_entropy_reference)

# %% [markdown]
# We can *measure* what it allocates, even on a CPU: a `TorchDispatchMode` sees every PyTorch op and its outputs,
# so it can add up the bytes of every freshly allocated tensor (outputs that alias an input — in-place ops —
# are not new memory). Triton kernels do not go through PyTorch's dispatcher, but they allocate nothing.

# %%
from minilora.memory import AllocationLog

show(AllocationLog)

n_small, v_small = 64, 4096
logits = torch.randn(n_small, v_small, dtype=torch.bfloat16)
labels = torch.randint(0, v_small, (n_small,))
one_copy = logits.numel() * logits.element_size()

x = logits.clone().requires_grad_()
with AllocationLog() as ref_count:
    ce.cross_entropy_reference(x, labels).backward()
x = logits.clone().requires_grad_()
with AllocationLog() as fast_count:
    ce.cross_entropy_fast(x, labels).backward()
print(f"logits {n_small} x {v_small} bf16 = {one_copy / 2**20:.2f} MiB")
print(f"reference fwd+bwd allocated {ref_count.bytes / one_copy:5.1f} x the logits' size")
print(f"kernel    fwd+bwd allocated {fast_count.bytes / one_copy:5.2f} x the logits' size")
print("the reference's (N, V)-sized allocations:",
      [f"{name}{shape} {str(dt)[6:]}" for name, shape, dt in ref_count.allocations if shape == (n_small, v_small)])

# %% [markdown]
# The cell above shows the reference allocating several logits-sized buffers (the fp32 copy, the softmax,
# the fp32 gradient and its cast back), while the kernel path allocates a few numbers per row. The next three
# sections show how.
#
# ## 2. The running log-sum-exp
#
# For one row z of logits and its label y, the loss is $\ell = \mathrm{lse}(z) - z_y$ with
# $\mathrm{lse}(z) = \log\sum_j e^{z_j}$. Computing $e^{z_j}$ directly overflows fp32 once $z_j > 88$, so
# everyone computes $m + \log\sum_j e^{z_j - m}$ with $m = \max_j z_j$ — which seems to need two passes (max first,
# then the sum). The **online** form needs one: keep a running max $m$ and a running sum
# $s = \sum_{j\ \mathrm{seen}} e^{z_j - m}$. When a new block raises the max to $m'$,
#
# $$ s' = s\, e^{m - m'} + \sum_{j \in \mathrm{block}} e^{z_j - m'} $$
#
# because $e^{z_j - m} e^{m - m'} = e^{z_j - m'}$: the old terms are rescaled to the new reference, never
# recomputed. At the end, $\mathrm{lse} = m + \log s$. Here it is in five lines of PyTorch, on a row with large
# values where the naive formula overflows:

# %%
row = torch.randn(10_000) * 5 + 100.0  # logits around 100: exp(100) is inf in fp32
naive = torch.log(torch.exp(row).sum())
m, s = torch.tensor(float("-inf")), torch.tensor(0.0)
for block in row.split(1024):
    m_new = torch.maximum(m, block.max())
    s = s * torch.exp(m - m_new) + torch.exp(block - m_new).sum()
    m = m_new
print(f"naive log(sum(exp)) = {naive.item()},  online = {(m + torch.log(s)).item():.5f},  "
      f"torch.logsumexp = {torch.logsumexp(row, 0).item():.5f}")

# %% [markdown]
# The Triton forward kernel does exactly this, one program per row (per chunk of a row, see section 3), reading
# `BLOCK` logits per loop step. It loads in the storage dtype and computes in fp32, applies the optional logit
# scale and soft-cap $c\tanh(z/c)$ (Gemma-2 style) on the fly, and stores one fp32 number per row:

# %%
show(ce._ce_forward_kernel.fn)

# %% [markdown]
# Two details worth a second look: the running sums are kept **per lane** (a vector of BLOCK partial sums) and
# folded only once at the end, so each loop step needs one `tl.max` and one exp per logit; and masked columns
# past the row's end are set to −∞ *after* the soft-cap (soft-capping −∞ would give −c, a real number).
#
# ## 3. Chunking rows longer than 65,536
#
# One program per row is plenty of parallelism at 8192 rows, but not at 4: a long row would be read by one
# program while the GPU's other 131 multiprocessors wait. So rows longer than `MAX_CHUNK` are split into chunks,
# one program each (a 2-D launch grid: rows × chunks), each producing the lse of its chunk. Combining chunk
# results is the same max trick once more: $\mathrm{lse} = \log\sum_k e^{\mathrm{lse}_k}$.

# %%
print("MAX_CHUNK =", ce.MAX_CHUNK)
for vocab in (32_000, 49_152, 128_256, 256_000):
    chunk, n_chunks, block = ce._chunking(vocab)
    print(f"V = {vocab:7d}: {n_chunks} chunk(s) of up to {chunk} columns, read {block} at a time")

# a real run of the chunked path, checked against the reference (few rows: the interpreter is slow)
v_long = ce.MAX_CHUNK + 3000
z = torch.randn(3, v_long) * 3
y = torch.tensor([v_long - 1, 7, -100])  # one label in the second chunk, one ignored row
za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
fast = ce.cross_entropy_fast(za * 1.0, y, softcap=30.0)
ref = ce.cross_entropy_reference(zb, y, softcap=30.0)
fast.backward()
ref.backward()
print(f"V = {v_long}: loss kernel {fast.item():.6f} vs reference {ref.item():.6f}; "
      f"max gradient difference {(za.grad - zb.grad).abs().max().item():.2e}")

# %% [markdown]
# ## 4. The gradient, written over the logits
#
# $\partial \ell / \partial z_j = \mathrm{softmax}(z)_j - [j = y] = e^{z_j - \mathrm{lse}} - [j = y]$. Given the
# lse saved by the forward (one float per row), every element's gradient depends only on that element: the
# backward kernel reads a logit, writes its gradient **into the same address**, and the logits are gone — which
# is fine, because nothing else needs them after the loss. That is the "no fp32 copy, no new (N, V) buffer" of the
# target. The loss is a *sum* over the tokens that carry one, divided by `num_items`; passing the token count of
# a whole accumulated batch makes gradient accumulation exact.

# %%
show(ce._ce_backward_kernel.fn)
show(ce.CrossEntropyFunction.backward)

# %% [markdown]
# One caveat follows: after `loss.backward()` the logits tensor holds gradients. The model therefore lets the
# kernel write in place only when the logits it returns to you are not the same memory (`LlamaForCausalLM.loss`
# calls `ops.next_token_loss`, shown below, which checks it); `cross_entropy_fast(..., inplace_grad=False)` is the
# explicit opt-out.

# %%
from minilora import ops

show(ops.next_token_loss)

# %% [markdown]
# ## 5. Fused linear + cross-entropy: never hold all the logits
#
# Even with an in-place gradient the bf16 logits themselves are 2 GiB at Llama-3 scale. But the loss is a sum over
# tokens, and each token's logits depend only on its own hidden state. So: cut the N tokens into chunks of C rows;
# for each chunk compute its logits (C × V), compute the loss and the gradient of those logits (landing in the same
# buffer), and immediately push that gradient through the linear layer — dX for these rows, and this chunk's share
# of dW. The whole backward happens *inside the forward*; the real backward only scales by the upstream gradient.
# Because the upstream gradient of the loss is a plain number, the chunk's loss and gradient can come from one
# kernel launch, one program per row: `_ce_row_forward_backward_kernel` reads a row for the lse, then reads it
# again (now mostly from the L2 cache) to write the gradient. The recorded benchmark compares it with the two-kernel
# route of section 2–4 (the JSON's "LCE-sweep" rows, not printed in this lesson).

# %%
show(flce.FusedLinearCrossEntropyFunction.forward)

# %% [markdown]
# Memory is now one chunk of logits plus the gradients you asked for. The default chunk keeps the logits chunk near
# `CHUNK_BYTES`; the cell computes the peak for a few chunk sizes at Llama-3 shapes, with a trainable lm_head (dW
# is a (V, H) bf16 tensor, 0.98 GiB, which training the head holds in any case) and a frozen one (LoRA: no dW at all).

# %%
for C in (flce.default_chunk_size(N, V, 2), 512, 1024, N):
    chunk_logits = C * V * 2
    dX, dW = N * H * 2, V * H * 2
    print(f"chunk {C:5d} tokens: logits chunk {chunk_logits / GiB:6.3f} GiB → peak ≈ "
          f"{(chunk_logits + dX + dW) / GiB:5.2f} GiB (trainable lm_head), "
          f"{(chunk_logits + dX) / GiB:5.2f} GiB (frozen lm_head)")

# %% [markdown]
# Smaller chunks are leaner but slower: the weight gradient is read and written once per chunk
# (dW += dlogitsᵀ X over 32 chunks of 256 tokens means 32 × 2 × 0.98 GiB of traffic), and thin matmuls use the GPU
# less well. Let's check correctness on a small problem with a ragged last chunk, against the unfused definition:

# %%
torch.manual_seed(0)
hid = torch.randn(37, 16)
W = torch.randn(300, 16) / 4
lab = torch.randint(0, 300, (37,))
lab[::5] = -100
a = [hid.clone().requires_grad_(), W.clone().requires_grad_()]
b = [hid.clone().requires_grad_(), W.clone().requires_grad_()]
loss_fused = flce.fused_linear_cross_entropy_fast(a[0], a[1], lab, chunk_size=8)
loss_plain = flce.fused_linear_cross_entropy_reference(b[0], b[1], lab)
loss_fused.backward()
loss_plain.backward()
print(f"loss fused {loss_fused.item():.6f} vs unfused {loss_plain.item():.6f}; "
      f"dX max diff {(a[0].grad - b[0].grad).abs().max().item():.1e}, "
      f"dW max diff {(a[1].grad - b[1].grad).abs().max().item():.1e}")

# %% [markdown]
# In the model, `model(input_ids, labels, return_logits=False)` takes this route (the default still returns logits).
#
# ## 6. On a real GPU
#
# The benchmark `benchmarks/bench_ce_lora.py` times forward + backward at Llama-3 shapes against eager PyTorch,
# `torch.compile` and Liger-Kernel in one run on one card (`benchmarks/harness.py`: warm-up, rounds in rotated
# order, the same number of calls each, median and [min–max]), and records the peak memory above what was allocated
# before each call. On a machine with CUDA the next cell runs a reduced version live; otherwise it loads the
# newest recorded results.

# %%
if torch.cuda.is_available():
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "benchmarks.bench_ce_lora", "--only", "ce,lce,frozen", "--out",
                    "/tmp/ce-bench"], check=True)
    result_path = latest("/tmp/ce-bench", "ce-lora")
else:
    result_path = latest("benchmarks/results", "ce-lora")
result = load_results(result_path)
print(f"{result_path.name}: {result['card']}, torch {result['versions'].get('torch')}, triton "
      f"{result['versions'].get('triton')}, {result['date']}"
      + (f" — {result['provenance']}" if result.get("provenance") else ""))
GROUPS = ("CE", "linear+CE", "frozen lm_head")
rows = [r for r in result["rows"] if r["name"] in GROUPS and r["reps"] and r["impl"] != COPY_IMPL]
for r in rows:
    span = "range not recorded" if r.get("converted") else f"[{r['min_ms']:.2f}–{r['max_ms']:.2f}]"
    print(f"{r['name']:15s} {r['impl']:32s} {r['median_ms']:8.2f} ms {span:>19s}  {r['peak_gib']:6.2f} GiB extra")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, group in zip(axes, ("CE", "linear+CE")):
    sel = [r for r in rows if r["name"] == group]
    ax.errorbar([r["median_ms"] for r in sel], [r["peak_gib"] for r in sel], fmt="none", ecolor="k", lw=0.8,
                xerr=[[r["median_ms"] - r["min_ms"] for r in sel], [r["max_ms"] - r["median_ms"] for r in sel]])
    ax.scatter([r["median_ms"] for r in sel], [r["peak_gib"] for r in sel],
               c=["tab:orange" if r["impl"].startswith("minilora") else "tab:gray" for r in sel])
    for r in sel:
        ax.annotate(r["impl"], (r["median_ms"], r["peak_gib"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("ms, forward + backward: median, whiskers [min–max] (lower is better)")
    ax.set_ylabel("peak extra GiB (lower is better)")
    ax.set_title(f"{group}: {sel[0].get('shape', '') if sel else ''}", fontsize=9)
fig.suptitle(f"{result['card']} — {result['date'][:10]}")
fig.tight_layout()
plt.show()

# %% [markdown]
# **What the plot says** — the cell below words each comparison from the recorded numbers (fastest and leanest in
# each group, and minilora against each alternative), rather than trusting prose written before the run.

# %%
def against(group, mine, other):
    """minilora against one alternative, each word picked from the sign of its difference (minilora.prose)."""
    dt, dm = mine["median_ms"] - other["median_ms"], mine["peak_gib"] - other["peak_gib"]
    return (f"{group}: {mine['impl']} against {other['impl']} ({mine['median_ms']:.2f} vs "
            f"{other['median_ms']:.2f} ms; {mine['peak_gib']:.3f} vs {other['peak_gib']:.3f} GiB): "
            f"{compare(dt, 'ms', fmt='.2f')}; {compare(dm, 'GiB', fmt='.3f')}")


for group in GROUPS:
    sel = [r for r in rows if r["name"] == group]
    if not sel:
        continue
    fastest, leanest = min(sel, key=lambda r: r["median_ms"]), min(sel, key=lambda r: r["peak_gib"])
    tied = [r["impl"] for r in sel if f"{r['peak_gib']:.3f}" == f"{leanest['peak_gib']:.3f}"]
    print(f"{group}: fastest {fastest['impl']} ({fastest['median_ms']:.2f} ms), least memory {' and '.join(tied)} "
          f"({leanest['peak_gib']:.3f} GiB{', a tie at this precision' if len(tied) > 1 else ''})")
    mine = next((r for r in sel if r["impl"].startswith("minilora (default chunk") or r["impl"] == "minilora"),
                None)
    for other in (r for r in sel if not r["impl"].startswith("minilora")):
        if mine:
            print("    " + against(group, mine, other))

# %% [markdown]
# Read the numbers above with section 5's memory formula in mind: with a trainable head, each chunk
# read-modify-writes the (V, H) weight gradient, so smaller chunks (less memory) pay in time and bigger chunks buy
# speed with memory — the fixed-chunk rows show the trade on this card. `torch.compile` runs three full-size
# matmuls and holds the full logits to do so, which its peak memory shows. In LoRA fine-tuning the lm_head is
# frozen: there is no weight gradient, and the "frozen lm_head" rows show what the fused loss costs in the setting
# minilora trains in.
#
# ## Exercises
#
# - **Exercise 3.3 — online log-sum-exp** (`exercises/week3/ex3_3_online_logsumexp.py`): write the update step,
#   the block loop and the chunk combination. Check with `pytest -m ex3_3`.
#
# ## Journal prompt
#
# In your journal: for the model you care about, compute N × V × (2 + 4 + 4) bytes for your batch. What fraction of
# your GPU is that? Which of the three ideas here (in-place gradient, chunking, fused linear) removes which part,
# and which one would you keep if you could only have one?

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
# # Week 4 — Where the memory goes
#
# "QLoRA fits a model in a fraction of the memory" is a claim about four piles of bytes: the weights, their
# gradients, the optimizer's state and the activations the forward keeps for the backward. This lesson predicts
# each pile for full fine-tuning, LoRA and QLoRA from nothing but a model's configuration, checks the predictions
# against the real tensors of SmolLM2's shapes on your CPU, and then looks at the memory a GPU *reserves* but does
# not use: fragmentation, and what `expandable_segments` changes.
#
# **Goals.** By the end of this lesson you can
#
# 1. write down, for any config, the bytes of weights, gradients, AdamW state and activations for full / LoRA / QLoRA;
# 2. compute the bits per parameter NF4 really costs, with and without double quantization;
# 3. check a memory model against the tensors a training step actually holds;
# 4. explain why a caching allocator fragments and what `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` does,
#    with a measurement from an H200.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/__init__.py` (CUDA memory configuration) | sets `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` before torch starts | section 5 below; `benchmarks/bench_expandable_segments.py` |
# | `unsloth/models/_utils.py` | memory helpers, gradient checkpointing with offload | `minilora/memory/estimate.py` (accounting); `minilora/models/checkpointing.py` |
# | `unsloth/kernels/utils.py` → `fast_dequantize` | 4-bit weights dequantized just in time | `minilora/linear4bit.py` (week 3) |

# %%
import copy
import pathlib
import subprocess
import sys

import matplotlib.pyplot as plt
import torch

import benchmarks.bench_expandable_segments as bench_alloc
from benchmarks.harness import latest, load_results
from minilora import memory
from minilora.linear4bit import quantize_model
from minilora.lora import get_peft_model
from minilora.memory import (
    METHODS,
    GiB,
    estimate_memory,
    measure_model_bytes,
    measure_training_bytes,
    nf4_bytes,
    param_counts,
    quant_state_bits_per_param,
)
from minilora.models.registry import build_model, catalogue_config
from minilora.quant import quantize_nf4
from minilora.show import show

torch.manual_seed(0)
print(memory.__doc__)

# %% [markdown]
# ## 1. The four piles
#
# - **Weights.** Every parameter once (a tied embedding and head count once). 2 bytes in bf16; for QLoRA the
#   block linears become NF4 codes (½ byte) plus their quantization state.
# - **Gradients.** One per *trainable* parameter. Full fine-tuning: all of them. LoRA: only A and B.
# - **Optimizer state.** AdamW keeps two moments (m, v) per trainable parameter, in the parameter's dtype — what
#   `torch.optim.AdamW` does, and the one convention of this course (week 1 counts the same way). Mixed-precision
#   recipes often keep the moments in fp32 instead; section 2 prints that variation next to it.
# - **Activations.** What the forward saves for the backward. They grow with batch × sequence length, not with
#   the parameter count, and gradient checkpointing trades them for a second forward.
#
# The activation model counts the tensors minilora's Llama saves, per token and layer:

# %%
show(memory.activation_bytes)

# %% [markdown]
# ## 2. The accounting table: SmolLM2-135M and Llama-3-8B
#
# bf16 weights, LoRA r = 16 on all seven projections (A and B in bf16 for LoRA, float32 for QLoRA as minilora
# keeps them), AdamW, gradient checkpointing on. SmolLM2 at the course's CPU batch (4 × 256 tokens), Llama-3-8B at
# one 2048-token sequence.

# %%
setups = {"smollm2-135m": dict(batch_size=4, seq_len=256), "llama-3-8b": dict(batch_size=1, seq_len=2048)}
estimates = {}
for name, kw in setups.items():
    cfg = catalogue_config(name)
    n = param_counts(cfg)
    print(memory.table(cfg, f"{name}: {n['total'] / 1e6:,.1f} M parameters, batch {kw['batch_size']} × "
                            f"{kw['seq_len']} tokens", **kw))
    estimates[name] = {m: estimate_memory(cfg, m, **kw) for m in METHODS}
    full, qlora = estimates[name]["full"].total, estimates[name]["qlora"].total
    print(f"QLoRA needs {qlora / full:.1%} of full fine-tuning's memory ({1 - qlora / full:.1%} less)")
    # the variation: AdamW's two moments in fp32 rather than in the (bf16) parameter's dtype
    full_fp32_moments = full + n["total"] * 2 * (4 - 2)  # every parameter: 2 moments, 4 bytes instead of 2
    print(f"variation, moments in fp32: full fine-tuning {full_fp32_moments / GiB:.2f} GiB instead of "
          f"{full / GiB:.2f} GiB\n")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
parts = [("weights", lambda e: e.weights + e.adapter), ("quant state", lambda e: e.quant_state),
         ("gradients", lambda e: e.gradients), ("optimizer", lambda e: e.optimizer),
         ("activations", lambda e: e.activations)]
for ax, (name, est) in zip(axes, estimates.items()):
    bottom = [0.0] * 3
    for label, get in parts:
        vals = [get(est[m]) / GiB for m in METHODS]
        ax.bar(METHODS, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title(name)
    ax.set_ylabel("GiB")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# For Llama-3-8B full fine-tuning pays for the optimizer state (two moments per parameter) and the gradients of
# every parameter; LoRA removes both but keeps 16-bit weights; QLoRA stores the block linears in about 4 bits
# instead of 16 (the bits per parameter are printed below). The cell below splits QLoRA's weights into the 4-bit
# block linears and what stays 16-bit (the embedding and head of a 128k vocabulary, and the norms).

# %%
q8b, c8b = estimates["llama-3-8b"]["qlora"], param_counts(catalogue_config("llama-3-8b"))
dense16 = (c8b["total"] - c8b["block_linear"]) * 2
nf4_linears = q8b.weights - dense16 + q8b.quant_state
print(f"Llama-3-8B QLoRA weights: block linears in NF4 {nf4_linears / GiB:.2f} GiB "
      f"({8 * nf4_linears / c8b['block_linear']:.3f} bits per parameter), "
      f"16-bit embedding + head + norms {dense16 / GiB:.2f} GiB, adapters {q8b.adapter / GiB:.3f} GiB")

# %% [markdown]
# ## 3. What NF4 really costs per parameter
#
# 4 bits of code, plus the block's share of its scale. The cell computes it for several block sizes, from the
# formula and from real quantized tensors:

# %%
x = torch.randn(1024, 1024)
print(f"{'blocksize':>9s} {'plain (formula)':>16s} {'plain (tensor)':>15s} {'double-quant (formula)':>23s} "
      f"{'double-quant (tensor)':>22s}")
for bs in (32, 64, 128, 256):
    plain, dq = quantize_nf4(x, bs), quantize_nf4(x, bs, double_quant=True)
    print(f"{bs:9d} {4 + quant_state_bits_per_param(bs, False):16.4f} {plain.bits_per_param():15.4f} "
          f"{4 + quant_state_bits_per_param(bs, True):23.4f} {dq.bits_per_param():22.4f}")
cfg8b = catalogue_config("llama-3-8b")
saved = sum(32 * (o * i) // 64 // 8 - nf4_bytes(o * i)["state"] for o, i in memory.block_linear_shapes(cfg8b).values())
print(f"double quantization saves {saved * cfg8b.num_hidden_layers / 2**20:.0f} MiB on Llama-3-8B's block linears")

# %% [markdown]
# ## 4. Predicted vs measured, with real tensors on the CPU
#
# A model with SmolLM2's exact widths but two blocks (so a training step takes seconds), in float32. For each
# method we build it, quantize it (QLoRA), add adapters (LoRA, QLoRA), run one AdamW step and count: the bytes of
# the model's tensors, the gradients, the optimizer's moment buffers, and — through
# `torch.autograd.graph.saved_tensors_hooks` — every tensor the forward saved for the backward.

# %%
show(memory.measure_training_bytes)

# %%
cfg = catalogue_config("smollm2-135m")
cfg.num_hidden_layers = 2
base = build_model(cfg, dtype=torch.float32)
for p in base.parameters():
    torch.nn.init.normal_(p, std=0.02)
B, T = 2, 64
ids = torch.randint(0, cfg.vocab_size, (B, T))
rows = []
for method in METHODS:
    model = copy.deepcopy(base)
    if method == "qlora":
        quantize_model(model)
    if method != "full":
        get_peft_model(model, r=16, verbose=False)
    pred = estimate_memory(cfg, method, dtype=torch.float32, batch_size=B, seq_len=T, gradient_checkpointing=False)
    held, step = measure_model_bytes(model), measure_training_bytes(model, ids)
    rows.append((method, "weights+state", pred.weights + pred.quant_state + pred.adapter,
                 held["frozen"] + held["trainable"] + held["quant_state"]))
    rows.append((method, "gradients", pred.gradients, step["gradients"]))
    rows.append((method, "optimizer", pred.optimizer, step["optimizer"]))
    rows.append((method, "activations", pred.activations, step["activations"]))
print(f"{'method':7s}{'pile':>15s}{'predicted MiB':>15s}{'measured MiB':>14s}{'measured/pred':>15s}")
for method, pile, p, m in rows:
    print(f"{method:7s}{pile:>15s}{p / 2**20:15.3f}{m / 2**20:14.3f}{m / p:15.3f}")

# %% [markdown]
# The table above: weights, quantization state, gradients and optimizer state match to the byte — they are just
# shapes times dtypes. Activations are a model of what the code saves, so they match only approximately; note
# the LoRA and QLoRA rows save a little *less* than full fine-tuning: a frozen linear layer does not need its
# input for a weight gradient, so autograd does not keep it (and `Linear4bit` keeps nothing at all).
#
# ## 5. Reserved is not allocated: fragmentation and `expandable_segments`
#
# PyTorch's CUDA caching allocator asks the driver for big *segments* and carves tensors out of them. A freed
# tensor's memory stays in its segment, cached for reuse. A segment goes back to the driver only when nothing in
# it is alive, and a cached hole can only serve a request that fits in it. Training with varying sequence lengths
# is the classic trap: each step's activations are a little larger than the last, and one small tensor that
# outlives a step pins the old segment. **Reserved** memory (what `nvidia-smi` shows, what causes OOM) climbs while
# **allocated** memory (live tensors) stays small.
#
# With `expandable_segments:True` the allocator reserves a large range of *virtual* addresses and maps physical
# pages into it as needed, so a segment can grow in place and pages freed at its end can back the next, larger
# request. Unsloth sets it in `unsloth/__init__.py` before torch initializes CUDA. The pattern measured on the GPU
# machine, each setting in a fresh subprocess (the variable is read once, at CUDA start-up):

# %%
show(bench_alloc.pattern)

# %%
results_dir = pathlib.Path("benchmarks/results")
if torch.cuda.is_available():  # measure live on this machine
    subprocess.run([sys.executable, "-m", "benchmarks.bench_expandable_segments", "--out", str(results_dir)],
                   check=True)
rec = load_results(latest(results_dir, "expandable-segments"))
runs = {r["impl"]: r for r in rec["rows"]}
print(f"recorded on {rec['card']}, torch {rec['versions']['torch']}, {rec['date']}"
      + (f" ({rec['provenance']})" if rec.get("provenance") else ""))
for setting, r in runs.items():
    print(f"{setting:26s} allocated {r['allocated_mib']:8.0f} MiB, reserved {r['reserved_mib']:8.0f} MiB, "
          f"peak reserved {r['peak_reserved_mib']:8.0f} MiB, segments {r['segments']}")
default, expandable = runs["default"], runs["expandable_segments:True"]
print(f"after the pattern the default allocator reserves {default['reserved_mib'] / expandable['reserved_mib']:.0f}× "
      f"what expandable segments reserve, for the same {default['allocated_mib']:.0f} MiB of live tensors")

# %%
fig, ax = plt.subplots(figsize=(9, 3.4))
for setting, style in (("default", "-"), ("expandable_segments:True", "--")):
    hist = runs[setting]["history"]
    steps = [h["step"] for h in hist]
    ax.plot(steps, [h["reserved_mib"] / 1024 for h in hist], style, label=f"reserved ({setting})")
ax.plot(steps, [h["allocated_mib"] / 1024 for h in runs["default"]["history"]], ":", color="k",
        label="allocated (both)")
ax.set_xlabel("step")
ax.set_ylabel("GiB")
ax.set_title(f"growing activations + 3 MiB survivors on {rec['card']}")
ax.legend()
plt.show()

# %% [markdown]
# With the default allocator every step leaves a pinned segment behind: reserved memory grows with the sum of all
# step sizes, and an 80 GiB card would run out of memory long before its live tensors fill it. With expandable
# segments reserved memory stays near the largest single step plus the survivors.
#
# ## Exercises
#
# - `pytest -m ex4_1` — the memory calculator (`exercises/week4/ex4_1_memory_calculator.py`)
#
# ## Journal prompt
#
# For a model you would like to fine-tune, write its four piles for full / LoRA / QLoRA at your sequence length.
# Which pile dominates QLoRA, and what would you change first (sequence length, checkpointing, rank, vocabulary)?
# Why can `nvidia-smi` show much more memory in use than `torch.cuda.memory_allocated()`?

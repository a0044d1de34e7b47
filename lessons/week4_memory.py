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
import math
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
from minilora.prose import claim, compare
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
# keeps them), AdamW, gradient checkpointing on. SmolLM2 at a small batch of 4 × 256 tokens, Llama-3-8B at
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
    claim("QLoRA needs {share:.1%} of full fine-tuning's memory ({less:.1%} less)", qlora < full,
          share=qlora / full, less=1 - qlora / full)
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
bits = 8 * nf4_linears / c8b["block_linear"]
claim("Llama-3-8B QLoRA weights: block linears in NF4 {nf4:.2f} GiB ({bits:.3f} bits per parameter: about 4 bits "
      "instead of 16), 16-bit embedding + head + norms {dense:.2f} GiB, adapters {adapters:.3f} GiB", 4 <= bits < 4.5,
      nf4=nf4_linears / GiB, bits=bits, dense=dense16 / GiB, adapters=q8b.adapter / GiB)

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
claim("double quantization saves {mib:.0f} MiB on Llama-3-8B's block linears", saved > 0,
      mib=saved * cfg8b.num_hidden_layers / 2**20)

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
# the LoRA and QLoRA rows save a little *less* than full fine-tuning (the table prints by how much; this lesson
# does not break the difference down by tensor).
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

# %% [markdown]
# ## 6. "2x faster" and "70% less memory" are two regimes
#
# Unsloth's README puts its two headline numbers side by side, as if one run showed both. The recorded runs say
# they belong to different context lengths. Each row below is one 8B-shaped QLoRA training step at batch 1 on one
# GPU, HF + PEFT + bitsandbytes (checkpointing on) against minilora's full recipe, timed in alternation in one
# process (`benchmarks/ctx_mem.py`; the file records card, versions and date). Speed-up is HF's step time over
# minilora's; memory saved is one minus minilora's peak over HF's.

# %%
from benchmarks.schema import pick

HF = "HF+PEFT+bnb qlora"
ctx = load_results(latest(results_dir, "ctx-mem-8b"))
print(f"{ctx['card']}, {ctx['date'][:10]}, torch {ctx['versions']['torch']}, transformers "
      f"{ctx['versions']['transformers']}, peft {ctx['versions']['peft']}, bitsandbytes "
      f"{ctx['versions']['bitsandbytes']}")
lengths = ctx["config"]["lengths"]
ours_impl = next(r["impl"] for r in ctx["rows"] if r["impl"] != HF)
regime = []
for L in lengths:
    hf, ours = pick(ctx, impl=HF, seq=L), pick(ctx, impl=ours_impl, seq=L)
    regime.append({"tokens": L, "speedup": hf["median_ms"] / ours["median_ms"],
                   "saved": 100 * (1 - ours["peak_gib"] / hf["peak_gib"]), "hf": hf, "ours": ours})
    print(f"{L:6d} tokens: HF {hf['median_ms']:7.1f} ms {hf['peak_gib']:5.1f} GiB | minilora '{ours_impl}' "
          f"{ours['median_ms']:7.1f} ms {ours['peak_gib']:5.1f} GiB | {regime[-1]['speedup']:.3f}x the speed, "
          f"{regime[-1]['saved']:.0f}% of the memory saved")
short, long_ = regime[0], regime[-1]
claim("at {short:,} tokens minilora's step is {s0:.3f}x HF's speed but saves only {m0:.0f}% of the memory: the "
      "speed regime", short["speedup"] > long_["speedup"] and short["saved"] < long_["saved"],
      short=short["tokens"], s0=short["speedup"], m0=short["saved"])
claim("at {long:,} tokens the speed-up falls to {s1:.3f}x while the memory saved rises to {m1:.0f}%: the memory "
      "regime", long_["speedup"] < short["speedup"] and long_["saved"] > short["saved"], long=long_["tokens"],
      s1=long_["speedup"], m1=long_["saved"])
both = [r["tokens"] for r in regime if r["speedup"] >= 2 and r["saved"] >= 70]
claim("lengths where one run reaches both Unsloth's 2x and its 70% at once: {both}", not both,
      both=", ".join(map(str, both)) or "none")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].plot(lengths, [r["speedup"] for r in regime], "o-", label="minilora vs HF, recorded")
axes[0].axhline(2, ls="--", color="gray", label="Unsloth's “2x faster”")
axes[0].set(xscale="log", xlabel="context length (tokens, B1)", ylabel="speed-up (HF time / minilora time)",
            ylim=(0, 2.5))
axes[1].plot(lengths, [r["saved"] for r in regime], "o-", color="C1", label="minilora vs HF, recorded")
axes[1].axhline(70, ls="--", color="gray", label="Unsloth's “70% less”")
axes[1].set(xscale="log", xlabel="context length (tokens, B1)", ylabel="memory saved (%)", ylim=(0, 100))
for ax in axes:
    ax.set_xticks(lengths, [f"{L // 1024}K" for L in lengths])
    ax.legend(fontsize=8)
fig.suptitle(f"Llama-3-8B shape, QLoRA r16, batch 1 — {ctx['card']}, {ctx['date'][:10]}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Why the two curves cross. The memory side can be read from the same rows (the cell below): at short context
# the peak is mostly what stays resident — the 4-bit base, the adapters and their optimizer state (the cell below
# prints that share for the HF step) — so no technique can remove much of it; at long context the activations are the peak, and those are what
# minilora offloads (and its fused loss never builds the full logits). The time side is an explanation these rows
# cannot prove (that takes a profile of each step): the speed-up comes from the work around the matmuls, where the
# ladder further down shows '+ triton' saving the most, while attention — the same SDPA call on both sides and
# quadratic in length — grows into a larger share of both steps, and time both sides spend alike pulls the ratio
# toward 1.

# %%
res_short = 100 * short["hf"]["resident_gib"] / short["hf"]["peak_gib"]
res_long = 100 * long_["hf"]["resident_gib"] / long_["hf"]["peak_gib"]
claim("HF's resident weights and states are {a:.0f}% of its peak at {short:,} tokens and {b:.0f}% at {long:,}",
      res_short > 50 > res_long, a=res_short, b=res_long, short=short["tokens"], long=long_["tokens"])
per_token = ctx["derived"][HF]["bytes_per_token"]
card = ctx["derived"]["card_total_gib"]
longest = load_results(latest(results_dir, "long-context-8b"))
far = max(longest["rows"], key=lambda r: r["seq"])
hf_far = (short["hf"]["peak_gib"] * GiB + per_token * (far["seq"] - short["tokens"])) / GiB
claim("at {far:,} tokens minilora's step ran in {ours:.1f} GiB; HF's own slope ({mb:.2f} MB a token) puts it at "
      "{hf:.0f} GiB there, more than the card's {card:.0f} GiB", hf_far > card > far["peak_gib"], far=far["seq"],
      ours=far["peak_gib"], mb=per_token / 1e6, hf=hf_far, card=card)

# %% [markdown]
# ### The speed–memory frontier
#
# One step has many settings: how much to recompute, what to offload, which kernels. Each is a point of tokens/s
# against peak memory; the useful ones are those no other point beats on both (the frontier). The cell reads the
# newest `benchmarks/results/frontier-*.json` (minilora's memory budgets with HF with and without checkpointing,
# all in one run) and, until one is recorded, the end-to-end ladder of `e2e-8b-*.json`, which has HF with
# checkpointing only.

# %%
frontier_file = latest(results_dir, "frontier")
front = load_results(frontier_file or latest(results_dir, "e2e-8b"))
points = [r for r in front["rows"] if r.get("tok_s") and r.get("peak_gib")]
print(f"{'frontier' if frontier_file else 'end-to-end ladder (no frontier file recorded yet)'}: {front['card']}, "
      f"{front['date'][:10]}, {front.get('notes', '')[:110]}")


def dominated(r):
    return any(o["tok_s"] >= r["tok_s"] and o["peak_gib"] <= r["peak_gib"] and o is not r
               and (o["tok_s"], o["peak_gib"]) != (r["tok_s"], r["peak_gib"]) for o in points)


for r in sorted(points, key=lambda r: r["peak_gib"]):
    print(f"  {r['impl']:28s} {r['tok_s']:8.0f} tokens/s at {r['peak_gib']:6.2f} GiB"
          f"{'' if dominated(r) else '   <- on the frontier'}")
fig, ax = plt.subplots(figsize=(7, 4))
for r in points:
    is_hf = r["impl"].startswith("HF")
    ax.plot(r["peak_gib"], r["tok_s"], "s" if is_hf else "o", color="C3" if is_hf else "C0",
            mfc="white" if dominated(r) else None)
    ax.annotate(r["impl"], (r["peak_gib"], r["tok_s"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
edge = sorted((r for r in points if not dominated(r)), key=lambda r: r["peak_gib"])
ax.step([r["peak_gib"] for r in edge], [r["tok_s"] for r in edge], where="post", color="C0", alpha=0.4)
ax.set(xlabel="peak GiB", ylabel="tokens/s", title=f"speed against memory — {front['card']}, {front['date'][:10]}")
plt.tight_layout()
plt.show()
hf_rows = [r for r in points if r["impl"].startswith("HF")]
for hf in hf_rows:
    better = [r for r in points if not r["impl"].startswith("HF") and r["tok_s"] > hf["tok_s"]
              and r["peak_gib"] < hf["peak_gib"]]
    best = max(better, key=lambda r: r["tok_s"], default=None)
    claim("{hf}: minilora's '{best}' beats it on both axes, {times:.2f}x its tokens/s at {less:.0f}% less peak "
          "memory", best is not None, hf=hf["impl"], best=best["impl"] if best else "none",
          times=best["tok_s"] / hf["tok_s"] if best else 0.0,
          less=100 * (1 - best["peak_gib"] / hf["peak_gib"]) if best else 0.0)

# %% [markdown]
# ### What "+ triton" is made of
#
# The capstone's ladder turns the Triton kernels on as one stage. Which trick buys what is an ablation: the same
# step with one kernel switched back to its reference at a time. The cell reads the newest
# `benchmarks/results/ablation-*.json` when one is recorded; until then it shows the ladder itself, stage by stage,
# with each stage's change against the one before.

# %%
ablation_file = latest(results_dir, "ablation")
steps = load_results(ablation_file or latest(results_dir, "e2e-8b"))
rows = [r for r in steps["rows"] if r.get("peak_gib") is not None and not r["impl"].startswith("HF")]
print(f"{'ablation' if ablation_file else 'ladder (no ablation file recorded yet)'}: {steps['card']}, "
      f"{steps['date'][:10]}")
for before, after in zip(rows, rows[1:]):
    print(f"  {before['impl']:>12s} -> {after['impl']:12s} time "
          f"{compare(after['median_ms'] - before['median_ms'], 'ms')}, peak "
          f"{compare(after['peak_gib'] - before['peak_gib'], 'GiB', fmt='.2f')}")
if not ablation_file:
    drops = {after["impl"]: before["median_ms"] - after["median_ms"] for before, after in zip(rows, rows[1:])}
    claim("of the ladder's stages, '+ triton' saves the most time: {ms:.0f} ms a step", max(drops, key=drops.get)
          == "+ triton", ms=drops.get("+ triton", 0.0))

# %% [markdown]
# ### How fair is the anchor?
#
# The ratios above are against one particular HF step, and its choices move them. **Attention:** the anchor uses
# PyTorch's SDPA, not the flash-attn package (FA2) of Unsloth's own comparison; minilora uses the same SDPA, so
# attention costs both sides the same and pulls the ratio toward 1 as the context grows — a faster shared attention
# would raise the ratio at long context, not lower it. **Random weights:** a step's time and memory do not depend on
# the weights' values, so the ratio holds for a trained model; only the loss is meaningless (checked below).
# **Rank 16,** not the README's 32: the LoRA matmuls are small next to the base's on both sides; a higher rank was
# not measured here. **Full-length rows:** every row is exactly S tokens, with no padding. Real instruction
# data is short and uneven; a padded HF batch then spends time on padding that a packed batch does not, so real data
# can widen the gap — that is a separate measurement (packing), not part of these ratios.

# %%
anchor = pick(front if not frontier_file else load_results(latest(results_dir, "e2e-8b")), impl=HF)
vocab = catalogue_config("llama-3-8b").vocab_size
claim("the anchor's loss, {loss:.2f}, sits near ln V = {lnv:.2f}: random weights, so the step measures cost, not "
      "learning", abs(anchor["loss"] - math.log(vocab)) < 1.0, loss=anchor["loss"], lnv=math.log(vocab))

# %% [markdown]
# ## Exercises
#
# - `pytest -m ex4_1` — the memory calculator (`exercises/week4/ex4_1_memory_calculator.py`)
#
# ## Journal prompt
#
# For a model you would like to fine-tune, write its four piles for full / LoRA / QLoRA at your sequence length.
# Which pile dominates QLoRA, and what would you change first (sequence length, checkpointing, rank, vocabulary)?
# Why can `nvidia-smi` show much more memory in use than `torch.cuda.memory_allocated()`?

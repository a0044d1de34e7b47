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
# # Week 5 — Gradient checkpointing and CPU offload, measured
#
# Activations are the pile of memory that grows with batch × sequence length (week 4). Gradient checkpointing keeps
# only each decoder layer's input and recomputes the layer during the backward; Unsloth's "unsloth" mode goes one
# step further and keeps even those inputs in CPU memory. This lesson measures, with the library's meter, what each
# mode keeps per layer on a small model on your CPU, what it costs in time, and where Unsloth keeps the code.
#
# **Goals.** By the end you can
#
# 1. say what a training step keeps per decoder layer with no checkpointing, with recompute and with offload;
# 2. measure it yourself with `minilora.memory.measure_activations` (saved-tensor hooks + custom Functions' state);
# 3. explain why offloading needs its own autograd Function rather than `save_on_cpu` around `checkpoint`;
# 4. find each piece of Unsloth's `unsloth/models/_utils.py` in minilora.
#
# **Where this lives in Unsloth, and in minilora.** `unsloth/models/_utils.py` is a toolbox the model files share:
#
# | in `unsloth/models/_utils.py` | what it does | minilora |
# |---|---|---|
# | `Unsloth_Offloaded_Gradient_Checkpointer` (the `use_gradient_checkpointing="unsloth"` mode; later versions moved it to `unsloth_zoo`) | keep each layer's input in CPU memory (non-blocking copies), recompute the layer in backward | `minilora/models/checkpointing.py` → `OffloadedCheckpoint`, `run_layer` |
# | plain gradient checkpointing switches | recompute each layer in backward | `minilora/models/checkpointing.py` (`checkpoint(..., use_reentrant=False)`); `LlamaModel.gradient_checkpointing` |
# | preparing a 4-bit model for training (`prepare_model_for_kbit_training`: freeze the base, keep norms in float32) | the frozen / trainable split | `minilora/linear4bit.py` → `quantize_model`; `minilora/lora.py` → `get_peft_model` |
# | memory and device statistics printed at start-up | what the GPU holds | `minilora/memory/` (estimates in `estimate.py`, the meters in `measure.py`) |
# | patches applied to transformers / TRL / PEFT at import (fused forwards, fixes such as gradient accumulation) | route the libraries' layers to fast code | none by design: `minilora/ops.py` is the one switch, and minilora's own trainer (`minilora/train/trainer.py`) divides by the step's token count (week 1) |

# %%

import matplotlib.pyplot as plt
import torch

from minilora.lora import get_peft_model
from minilora.memory import measure_activations
from minilora.models import build_model, catalogue_config, checkpointing, offload_store
from minilora.prose import claim, compare
from minilora.show import show

torch.manual_seed(0)
print(checkpointing.__doc__)

# %% [markdown]
# ## 1. The three modes in code
#
# Each decoder layer runs through `run_layer`. With no checkpointing it is a plain call, and autograd keeps every
# intermediate of the layer (norm outputs, q/k/v, attention output, gate/up/SwiGLU...). With recompute,
# `torch.utils.checkpoint` replaces them by placeholders and keeps only the layer's input. With offload,
# `OffloadedCheckpoint` keeps that input in CPU memory (`OffloadStore.put`: on a GPU the copy runs on a side stream into
# pinned memory, so it overlaps the layer's compute) and runs the layer without a graph:

# %%
show(checkpointing.run_layer)
show(checkpointing.OffloadedCheckpoint.forward)
show(offload_store.OffloadStore.put)

# %% [markdown]
# Why not `torch.autograd.graph.save_on_cpu()` around `checkpoint`? `save_on_cpu` moves what autograd *saves*;
# a non-reentrant checkpoint saves placeholders and keeps the layer's input alive itself, inside the closure it
# recomputes from — on the device. Stacked, `save_on_cpu` would see only those placeholders, not the inputs
# (this lesson does not measure that stack).
#
# ## 2. Saved bytes per layer, measured
#
# A model with SmolLM2-135M's layer widths (C 576, intermediate 1536, 9 heads) but a vocabulary cut to 8192 (so the
# lm_head does not dominate a CPU step) and 1 or 3 decoder layers, random weights in float32, LoRA r = 8 on the
# seven projections, batch 2 × 64 tokens. For each mode, `measure_activations` runs the forward and reports the
# bytes saved through autograd (they stay on the device) and the bytes custom Functions keep as attributes (the
# offloaded layer inputs, in CPU memory). The difference between 3 layers and 1, halved, is what one layer keeps.

# %%
B, T = 2, 64
MODES = {"none": False, "recompute": "recompute", "offload": "offload"}
LAYERS = (1, 3)
VOCAB = 8192


def small_model(layers):
    cfg = catalogue_config("smollm2-135m")
    cfg.num_hidden_layers, cfg.vocab_size = layers, VOCAB
    model = build_model(cfg, dtype=torch.float32)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    get_peft_model(model, r=8, verbose=False)
    return model.train(), cfg


ids = torch.randint(0, VOCAB, (B, T))
kept = {}  # (mode, layers) -> (bytes on the device, bytes moved to the host)
for layers in LAYERS:
    model, cfg = small_model(layers)
    for name, mode in MODES.items():
        model.gradient_checkpointing = mode
        report = measure_activations(model, lambda: model(ids, labels=ids))
        report.loss.backward()  # the step completes: offloaded inputs come back and the layers are recomputed
        model.zero_grad(set_to_none=True)
        kept[name, layers] = (report.saved, sum(report.held.values()))
MiB = 2**20
print(f"{'mode':10s}" + "".join(f"{f'{n} layer(s)':>24s}" for n in LAYERS) + f"{'per layer':>24s}")
per_layer = {}
for name in MODES:
    cells = [f"{kept[name, n][0] / MiB:9.2f} + {kept[name, n][1] / MiB:6.2f} host" for n in LAYERS]
    per_layer[name] = [(kept[name, 3][i] - kept[name, 1][i]) / 2 for i in (0, 1)]
    print(f"{name:10s}" + "".join(f"{c:>24s}" for c in cells)
          + f"{per_layer[name][0] / MiB:12.3f} + {per_layer[name][1] / MiB:6.3f} host")
layer_input = B * T * cfg.hidden_size * 4  # one (B, T, C) float32 tensor
print(f"\none layer input (B, T, C) in float32 = {layer_input / MiB:.3f} MiB")

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
for name, style in zip(MODES, ("o-", "s--", "^:")):
    ax.plot(LAYERS, [kept[name, n][0] / MiB for n in LAYERS], style, label=f"{name}: on the device")
ax.plot(LAYERS, [kept["offload", n][1] / MiB for n in LAYERS], "^-", color="C2", alpha=0.5,
        label="offload: in host memory")
ax.set(xlabel="decoder layers", ylabel="MiB kept for the backward", xticks=LAYERS,
       title=f"activations kept, SmolLM2 widths, batch {B} x {T} tokens")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the per-layer column against the size of one layer input printed above: with recompute a layer keeps its
# input and nothing else, with offload that input moves to host memory and the device keeps none of it. What
# stays on the device besides the layers (the one-layer column minus one layer's share, printed per mode below) is
# mostly the logits the loss needs, (B·T × V) — the part week 3's fused loss removes.

# %%
none_l, rec_l, off_l = (per_layer[m] for m in MODES)
claim("recompute keeps {rec:.3f} MiB per layer on the device ({inputs:.2f} layer inputs), no checkpointing "
      "{times:.1f}x that: the memory saved grows with the number of layers", none_l[0] > rec_l[0] > 0,
      rec=rec_l[0] / MiB, inputs=rec_l[0] / layer_input, times=none_l[0] / rec_l[0])
rng_bytes = torch.get_rng_state().numel()  # each checkpoint keeps the CPU generator's state to replay dropout
print(f"offload keeps {off_l[0] / MiB:.3f} MiB per layer on the device and {off_l[1] / MiB:.3f} MiB in host memory "
      f"({off_l[1] / layer_input:.2f} layer inputs; one input + the {rng_bytes:,}-byte random state = "
      f"{(layer_input + rng_bytes) / MiB:.3f} MiB)")
logits = B * T * cfg.vocab_size * 4  # float32
head = {name: (kept[name, 1][0] - per_layer[name][0]) / MiB for name in MODES}
claim("kept on the device besides the layers: {head}; the (B·T × V) float32 logits alone are {logits:.2f} MiB, most "
      "of it in every mode", all(logits / MiB <= h * 1.001 < 2 * logits / MiB for h in head.values()),
      head=", ".join(f"{name} {h:.2f} MiB" for name, h in head.items()), logits=logits / MiB)

# %% [markdown]
# ## 3. What it costs in time
#
# Recompute runs every layer's forward twice (once in the forward pass, once in the backward); offload adds a copy
# of each layer input out and back. On a CPU "host" and "device" are the same memory, so the offload copy is a
# plain memcpy here; on a GPU it crosses PCIe, overlapped with compute by non-blocking copies from pinned memory.
# The cell times forward + backward of the 3-layer model in each mode with the benchmarks' harness: untimed
# warm-up steps first, then rounds of timed steps with the order of the modes rotated (the cell prints how many),
# median and [min–max]. A CPU
# shared with other programs moves these numbers from run to run, so the cell words them from their sign and
# draws no conclusion from them; the conclusion comes from the recorded GPU run after it.

# %%
from benchmarks.harness import summarize, time_rotated
from benchmarks.schema import latest, load_results, pick

model, _ = small_model(3)


def step(mode):
    def run():
        model.gradient_checkpointing = mode
        model(ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
    return run


ROUNDS, REPS, WARMUP = 3, 2, 1
timed = time_rotated({name: step(mode) for name, mode in MODES.items()}, rounds=ROUNDS, reps=REPS, warmup=WARMUP)
print(f"{WARMUP} warm-up step per mode, then {ROUNDS} rounds of {REPS} steps each, order rotated: {timed['orders']}")
cpu = {name: summarize(samples) for name, samples in timed["samples"].items()}
for name, row in cpu.items():
    print(f"{name:10s} {row['median_ms']:7.1f} ms per step [{row['min_ms']:.1f}–{row['max_ms']:.1f}]")
for name in ("recompute", "offload"):
    a, b = cpu[name], cpu["none"]
    overlap = a["min_ms"] <= b["max_ms"] and b["min_ms"] <= a["max_ms"]
    print(f"{name} vs none on this CPU: {compare(a['median_ms'] - b['median_ms'], 'ms')} a step"
          + (" — but the [min–max] ranges overlap, so this run cannot tell the two apart" if overlap else ""))

# %%
gpu = load_results(latest("benchmarks/results", "gpu-checkpointing"))
off, rec, offl = (pick(gpu, impl=f"checkpointing {m}") for m in ("off", "recompute", "offload"))
print(f"recorded: {off['name']}, {gpu['card']}, {gpu['date'][:10]}, torch {gpu['versions']['torch']}")
for row in (off, rec, offl):
    print(f"  {row['impl']:24s} {row['median_ms']:6.1f} ms [{row['min_ms']:.1f}–{row['max_ms']:.1f}]  peak "
          f"{row['peak_gib']:5.2f} GiB")
claim("on the GPU, recompute costs time: {rec:.1f} ms a step against {off:.1f} ms without checkpointing "
      "({slower:.2f}x), and saves memory: peak {rec_gib:.1f} GiB against {off_gib:.1f} GiB",
      rec["median_ms"] > off["median_ms"] and rec["peak_gib"] < off["peak_gib"], rec=rec["median_ms"],
      off=off["median_ms"], slower=rec["median_ms"] / off["median_ms"], rec_gib=rec["peak_gib"],
      off_gib=off["peak_gib"])
claim("offload lowers the peak a further {less:.2f} GiB below recompute's", offl["peak_gib"] < rec["peak_gib"],
      less=rec["peak_gib"] - offl["peak_gib"])
print(f"offload vs recompute, time: {compare(offl['median_ms'] - rec['median_ms'], 'ms')} a step (its copies "
      f"overlap the compute)")

# %% [markdown]
# The memory saved grows with the number of layers (section 2, at one B × T). The time cost is the extra forward
# of every layer, plus the copies for offload. Fine-tuning recipes switch checkpointing on by default because the
# memory is what decides whether a run fits at all. How much offload adds on top of recompute depends on how large
# the layer inputs are next to everything else; the GPU run above prints what it saved at its one shape.
#
# ## Exercises
#
# - Predict, before running it, the per-layer numbers of section 2 for batch 4 × 256 tokens; then change `B` and
#   `T` and check. Which mode's per-layer bytes grow with T, and which do not grow at all on the device?
# - `minilora.memory.activation_bytes` (week 4) models these piles from the config alone: call it with
#   `gradient_checkpointing=True` and `False` for this model and compare with the measurement.
#
# ## Journal prompt
#
# For the model you care about, at your sequence length: how many GiB of layer inputs does recompute keep, and
# how long would copying them to host memory and back take over your GPU's host link? When is offload worth it, and
# when would you rather shorten the sequence or lower the batch?

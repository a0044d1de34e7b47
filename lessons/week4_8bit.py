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
# # Week 4 — 4-bit and 8-bit: int8 weights and 8-bit optimizer states
#
# Week 3 stored frozen weights in 4 bits (NF4). Two 8-bit formats matter for fine-tuning memory too:
# **LLM.int8-style weights** (one byte a weight, one scale per row, a few outlier columns kept in 16-bit), and
# **8-bit optimizer states** (Adam's two moments in one byte each, quantized blockwise with the *dynamic* map). This
# lesson builds both from scratch, compares them with bitsandbytes on this CPU (the cells say which tensors), and
# counts what they save.
#
# **Goals.** By the end of this lesson you can
#
# 1. build the 8-bit dynamic map (signed and unsigned) and say why its levels are spread over many decades;
# 2. quantize a tensor blockwise with it, byte for byte as bitsandbytes' CPU kernel does, and say where that kernel
#    differs from the exact nearest level;
# 3. quantize a weight matrix row-wise to int8 with outlier columns, and compare its size and error with NF4;
# 4. run one 8-bit AdamW step (dequantize, update, requantize) and explain why v must never decode to 0;
# 5. compute the optimizer-state bytes of Llama-3-8B for LoRA and full fine-tuning, with 32-bit and 8-bit AdamW.
#
# **Where this lives in Unsloth / bitsandbytes, and in minilora.**
#
# | Unsloth / bitsandbytes | what it does | minilora |
# |---|---|---|
# | bitsandbytes `functional.create_dynamic_map`, `quantize_blockwise` | the 8-bit dynamic map, blockwise 8-bit | `minilora/quant/dynamic8.py` |
# | bitsandbytes `functional.int8_vectorwise_quant` | LLM.int8 row-wise int8 + outlier columns | `minilora/quant/int8.py` |
# | `unsloth/models/loader.py` (`load_in_8bit=True`) → bitsandbytes `Linear8bitLt` | a frozen 8-bit linear layer | `minilora/linear8bit.py` → `Linear8bit`, `quantize_model_8bit` |
# | Unsloth's trainer arguments `optim="adamw_8bit"` → bitsandbytes `optim.AdamW8bit` | AdamW with 8-bit states | `minilora/train/adamw8bit.py` → `AdamW8bit` |
# | — | bytes of 8-bit weights and states | `minilora/memory/estimate.py` |

# %%
import logging
import math
import time

import matplotlib.pyplot as plt
import torch

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional CPU-kernel notice is not part of the lesson
import bitsandbytes as bnb
import bitsandbytes.functional as bnbF

from minilora import FastLanguageModel
from minilora.linear8bit import Linear8bit
from minilora.lora import get_peft_model
from minilora.memory import int8_weight_bytes, optimizer_state_bytes, trainable_tensor_sizes
from minilora.models import ModelConfig, build_model, catalogue_config
from minilora.models.registry import init_weights
from minilora.prose import claim
from minilora.quant import dequantize_nf4_reference, dynamic8, int8, quantize_nf4
from minilora.quant.dynamic8 import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit
from minilora.show import show
from minilora.train import adamw8bit
from minilora.train.adamw8bit import AdamW8bit, dequantize_states

torch.manual_seed(0)
t_start = time.time()
print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}")


def same(flag: bool) -> str:
    return "identical" if flag else "NOT identical"


# %% [markdown]
# ## 1. The dynamic map
#
# Adam's moments are nothing like normal weights: within one tensor they span many orders of magnitude. A table of
# 256 evenly spaced levels would round everything below 1/255 of the largest value to 0. The **dynamic** data type
# gives each decade (down to 1e-7) its own levels, like the exponent of a float, and spends more levels on the larger
# decades. The unsigned variant (for v = E[g²] ≥ 0) uses the sign bit as one more fraction bit.

# %%
show(dynamic8.dynamic_map)

# %%
signed, unsigned = dynamic_map(True), dynamic_map(False)
print(f"signed:   {signed.numel()} levels from {signed.min():.5f} to {signed.max():.1f}; "
      f"{same(torch.equal(signed, bnbF.create_dynamic_map(signed=True)))} to bitsandbytes' map")
print(f"unsigned: {unsigned.numel()} levels from {unsigned.min():.1f} to {unsigned.max():.1f}; "
      f"{same(torch.equal(unsigned, bnbF.create_dynamic_map(signed=False)))} to bitsandbytes' map")
print(f"{'decade':>16s} {'signed (>0)':>12s} {'unsigned':>9s}")
for i in range(7):
    lo, hi = 10.0 ** (i - 7), 10.0 ** (i - 6)
    n_s = int(((signed > lo) & (signed <= hi)).sum())
    n_u = int(((unsigned > lo) & (unsigned <= hi)).sum())
    print(f"  ({lo:.0e}, {hi:.0e}] {n_s:12d} {n_u:9d}")
decades = [i for i in range(7) if ((signed > 10.0 ** (i - 7)) & (signed <= 10.0 ** (i - 6))).any()]
claim("the signed map has levels in {n} decades of this table, and more of them in each larger decade",
      len(decades) >= 5 and all(int(((signed > 10.0 ** (i - 7)) & (signed <= 10.0 ** (i - 6))).sum())
                                 <= int(((signed > 10.0 ** (i - 6)) & (signed <= 10.0 ** (i - 5))).sum())
                                 for i in range(6)), n=len(decades))

# %%
fig, ax = plt.subplots(figsize=(9, 2.6))
ax.semilogx(signed[signed > 0], [1] * int((signed > 0).sum()), "|", ms=20, label="signed map, positive half")
ax.semilogx(unsigned[unsigned > 0], [0] * int((unsigned > 0).sum()), "|", ms=20, label="unsigned map")
ax.set_yticks([0, 1], ["unsigned", "signed"])
ax.set_ylim(-0.7, 1.7)
ax.set_xlabel("level (a fraction of the block's absmax)")
ax.set_title("the 8-bit dynamic map: levels in every decade, denser in the larger ones")
plt.show()

# %% [markdown]
# ## 2. Blockwise, and what bitsandbytes' CPU kernel does
#
# Cut the tensor into blocks of 256 values (2048 or 4096 elsewhere); per block keep the absmax in float32 and, per
# value, the index of a level of x / absmax. Which level? The exact answer is the nearest one. bitsandbytes' CPU
# kernel (0.50) first snaps x / absmax to one of 65,536 evenly spaced points of [-1, 1] and looks the nearest level
# of *that point* up in a table. The library does both (`rounding="nearest"` / `"grid"`):

# %%
show(dynamic8.quantize_blockwise_8bit)

# %% [markdown]
# A tensor whose values spread over several decades, as a moment's do, in 40 blocks of 256 (the last one short):

# %%
g = torch.Generator().manual_seed(0)
x = torch.randn(10_200, generator=g) * torch.rand(10_200, generator=g).pow(4)
theirs, qs = bnbF.quantize_blockwise(x, code=signed.clone(), blocksize=256)
grid_idx, grid_absmax = quantize_blockwise_8bit(x, signed, 256, rounding="grid")
near_idx, _ = quantize_blockwise_8bit(x, signed, 256, rounding="nearest")
print(f"grid rounding vs bitsandbytes: codes {same(torch.equal(grid_idx, theirs))}, absmax "
      f"{same(torch.equal(grid_absmax, qs.absmax))}")
differ = near_idx != theirs
rel = (x / grid_absmax.repeat_interleave(256)[: x.numel()]).abs()
print(f"nearest vs bitsandbytes: {int(differ.sum()):,} of {x.numel():,} codes differ "
      f"({100 * differ.float().mean():.1f}%), by at most {int((near_idx.int() - theirs.int()).abs().max())} levels; "
      f"{100 * (rel[differ] < 1e-3).float().mean():.0f}% of those values are below 1e-3 of their block's absmax")
back_n = dequantize_blockwise_8bit(near_idx, grid_absmax, signed, 256)
back_g = dequantize_blockwise_8bit(grid_idx, grid_absmax, signed, 256)
err_n, err_g = (back_n - x).abs().mean().item(), (back_g - x).abs().mean().item()
print(f"mean |error|: nearest {err_n:.4e}, grid {err_g:.4e}")
zero_g = int(quantize_blockwise_8bit(torch.tensor([0.0, 1.0]), signed, 256, rounding="grid")[0][0])
zero_n = int(quantize_blockwise_8bit(torch.tensor([0.0, 1.0]), signed, 256)[0][0])
print(f"an exact 0 in a block: nearest level {signed[zero_n]:.3g} (index {zero_n}), on the grid {signed[zero_g]:.3g} "
      f"(index {zero_g})")

# %% [markdown]
# The grid step is 2/65535 ≈ 3.1e-5 of the absmax, coarser than the map's smallest levels: a value far below its
# block's absmax (an exact 0 included) lands on a level near 2e-5 rather than its own. Per value the grid costs at
# most 2/65535 · absmax of extra error. Keep that floor in mind for section 4.
#
# ## 3. Int8 weights: one scale per row, outlier columns aside
#
# For a frozen weight (out, in) LLM.int8 keeps one absmax per output row and rounds w · 127 / absmax to an integer
# in [-127, 127]. LLM.int8's outliers are not in the weights but in the **activations**: in large models a few
# hidden-state features (the same few columns of X for almost every token) grow to magnitudes of 6 and more, and
# quantizing X row by row would squeeze every other feature of those rows onto a few levels. bitsandbytes finds
# those columns of X at run time and multiplies them, with the matching input columns of W, in 16-bit; the rest of
# the product runs in int8. A weight on its own has no activations to look at, so minilora's `Linear8bit` picks the
# 16-bit input columns when the layer is built, by the size of the weight's own entries — a weight-side stand-in
# for LLM.int8's rule, which the cells below measure on a real matrix:

# %%
show(int8.quantize_rowwise_int8)

# %% [markdown]
# A real matrix: layer 0's `down_proj` of SmolLM2-135M (the bundled GGUF). int8 against NF4 (blocks of 64, double
# quantization), bytes and error, and the same codes from bitsandbytes:

# %%
model, tokenizer = FastLanguageModel.from_pretrained("smollm2", dtype="float32", device="cpu")
W = model.model.layers[0].mlp.down_proj.weight.detach()
codes, scales, cols = int8.quantize_rowwise_int8(W)
c_bnb, s_bnb, _ = bnbF.int8_vectorwise_quant(W.clone())
print(f"down_proj {tuple(W.shape)}: int8 codes {same(torch.equal(codes, c_bnb))} to bitsandbytes', row scales "
      f"{same(torch.equal(scales, s_bnb))}")
back_int8 = int8.dequantize_rowwise_int8(codes, scales)
nf4_state = quantize_nf4(W, 64, double_quant=True)
back_nf4 = dequantize_nf4_reference(nf4_state, torch.float32)
rel_rms = {name: ((b - W).pow(2).mean().sqrt() / W.pow(2).mean().sqrt()).item()
           for name, b in (("int8", back_int8), ("nf4", back_nf4))}
bytes_ = {"bf16": W.numel() * 2, "int8": int8_weight_bytes(*W.shape)["total"], "nf4": nf4_state.nbytes}
for name in ("bf16", "int8", "nf4"):
    err = f"relative RMS error {rel_rms[name]:.4f}" if name in rel_rms else "(the reference)"
    print(f"{name:5s} {bytes_[name] / 2**20:7.3f} MiB  {8 * bytes_[name] / W.numel():6.3f} bits/param  {err}")
ratio = rel_rms["nf4"] / rel_rms["int8"]
print(f"int8's error is {'smaller' if ratio > 1 else 'larger'} than NF4's by a factor {max(ratio, 1 / ratio):.1f}, "
      f"for {bytes_['int8'] / bytes_['nf4']:.2f}x NF4's bytes")

# %%
big = W.abs().amax(0)  # the largest |w| of each input column
print(f"largest |w| per column: median {big.median():.3f}, max {big.max():.3f}")
for share in (0.0, 0.01, 0.05):  # thresholds that leave 0%, ~1% and ~5% of the columns aside
    threshold = 0.0 if share == 0 else torch.quantile(big, 1 - share).item()
    layer = Linear8bit.from_linear(model.model.layers[0].mlp.down_proj, threshold=threshold)
    err = ((layer.dequantize(torch.float32) - W).pow(2).mean().sqrt() / W.pow(2).mean().sqrt()).item()
    print(f"threshold {threshold:5.3f}: {layer.outlier_idx.numel():3d} outlier columns of {W.shape[1]}, "
          f"{8 * layer.nbytes / W.numel():.3f} bits/param, relative RMS error {err:.4f}")

# %% [markdown]
# `Linear8bit` stores exactly these tensors and, like `Linear4bit`, dequantizes W in forward *and* again in
# backward instead of keeping a dense copy (this lesson does not measure that copy's lifetime). (bitsandbytes'
# `Linear8bitLt` also quantizes the activations and picks the outlier columns from them at run time, |x| ≥ 6;
# minilora fixes them from W when the layer is built.)
#
# ## 4. 8-bit AdamW: dequantize, update, requantize
#
# Per parameter tensor and step: m and v come back to float32, the usual AdamW update runs, and both go back to
# 8 bits — m on the signed map, v on the unsigned one, blocks of 256. A tensor under 4096 values keeps float32
# states (bitsandbytes' `min_8bit_size`).

# %%
show(adamw8bit.AdamW8bit._update)
show(adamw8bit.quantize_states)

# %% [markdown]
# Same parameters, same gradients, 20 steps, minilora's `AdamW8bit` and bitsandbytes' `AdamW8bit`:

# %%
def grads(shape, step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(shape, generator=gen) * torch.rand(shape, generator=gen).pow(3) * (1 if step % 7 == 0 else 0.01)


p_ours = torch.nn.Parameter(torch.randn(70, 90) * 0.1)
p_bnb = torch.nn.Parameter(p_ours.detach().clone())
ours, ref = AdamW8bit([p_ours], lr=1e-2), bnb.optim.AdamW8bit([p_bnb], lr=1e-2)
for step in range(20):
    p_ours.grad, p_bnb.grad = grads(p_ours.shape, step), grads(p_ours.shape, step)
    ours.step()
    ref.step()
st_o, st_b = ours.state[p_ours], ref.state[p_bnb]
dm = (st_o["exp_avg_codes"].int() - st_b["state1"].int()).abs().max().item()
dv = (st_o["exp_avg_sq_codes"].int() - st_b["state2"].int()).abs().max().item()
print(f"after 20 steps: largest code difference m {dm}, v {dv}; absmax "
      f"{same(torch.equal(st_o['exp_avg_absmax'], st_b['absmax1']))}; parameters "
      f"{same(torch.equal(p_ours, p_bnb))}")

# %% [markdown]
# Why does `AdamW8bit` round with the grid rather than exactly? Because v ≈ m²: a gradient at 1e-4 of its block's
# largest sits near 1e-8 in v, below the unsigned map's smallest level. Rounded exactly, v decodes to 0 while m does
# not, and m / (√v + ε), with ε = 1e-8, is enormous. Three steps each way:

# %%
zero_v, moves = {}, {}
for rounding in ("nearest", "grid"):
    p = torch.nn.Parameter(torch.randn(64, 100, generator=torch.Generator().manual_seed(0)) * 0.1)
    opt, largest = AdamW8bit([p], lr=1e-2, rounding=rounding), 0.0
    for step in range(3):
        before = p.detach().clone()
        p.grad = grads(p.shape, step)
        opt.step()
        largest = max(largest, (p - before).abs().max().item())
    m, v = dequantize_states(opt.state[p], p.device)
    zero_v[rounding], moves[rounding] = int(((v == 0) & (m != 0)).sum()), largest
    print(f"rounding={rounding:8s} after {step + 1} steps, values with v = 0 but m ≠ 0: {zero_v[rounding]:4d}; "
          f"largest parameter move in one step {largest:.3g} (lr = 0.01)")
claim("exact rounding leaves {n} values with v = 0 but m ≠ 0 and moves a parameter by up to {big:.3g} in one step, "
      "{times:.0f}x the grid's largest move ({small:.3g})", zero_v["nearest"] > zero_v["grid"]
      and moves["nearest"] > 10 * moves["grid"], n=zero_v["nearest"], big=moves["nearest"],
      times=moves["nearest"] / moves["grid"], small=moves["grid"])

# %% [markdown]
# ## 5. A LoRA fine-tune with 8-bit states, and the bytes at Llama-3-8B scale
#
# A tiny Llama with LoRA on every linear layer trains on a batch of random sequences, once with `torch.optim.AdamW`
# and once with `AdamW8bit` (`min_8bit_size=256`, so that every LoRA matrix gets 8-bit states). The question is
# whether the 8-bit states follow the same curve; the cell also says how far the loss got against chance (a model
# that guesses uniformly scores ln V):

# %%
cfg = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
curves = {}
for name in ("AdamW (fp32 states)", "AdamW8bit"):
    tiny = build_model(cfg)
    init_weights(tiny, seed=0)
    get_peft_model(tiny, r=8, lora_alpha=16, verbose=False)
    params = [p for p in tiny.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0) if name.startswith("AdamW (") else \
        AdamW8bit(params, lr=1e-2, weight_decay=0.0, min_8bit_size=256)
    curves[name] = []
    for _ in range(30):
        loss = tiny(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        curves[name].append(loss.item())
a, b = (torch.tensor(c) for c in curves.values())
print(f"loss {a[0]:.3f} → {a[-1]:.3f} (fp32 states) and {b[0]:.3f} → {b[-1]:.3f} (8-bit states); largest gap "
      f"between the curves {(a - b).abs().max():.4f} ({100 * (a - b).abs().max() / a[0]:.2f}% of the first loss)")
chance = math.log(cfg.vocab_size)
claim("both runs end below chance (ln {V} = {chance:.3f}): {fp32:.3f} with fp32 states, {q8:.3f} with 8-bit ones — "
      "they learn something of the {n} sequences, far from memorizing them (that would take the loss near 0)",
      bool(a[-1] < chance and b[-1] < chance and min(a[-1], b[-1]) > 0.5), V=cfg.vocab_size, chance=chance,
      fp32=float(a[-1]), q8=float(b[-1]), n=ids.shape[0])
claim("the 8-bit curve never strays from the fp32 curve by more than {gap:.2f}% of the first loss",
      bool(100 * (a - b).abs().max() / a[0] < 5), gap=float(100 * (a - b).abs().max() / a[0]))
fig, ax = plt.subplots(figsize=(7, 3))
for name, c in curves.items():
    ax.plot(c, label=name)
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend()
plt.show()

# %%
llama = catalogue_config("llama-3-8b")
GiB = 2 ** 30
for method in ("lora", "full"):
    sizes = trainable_tensor_sizes(llama, method, r=16)
    fp32 = optimizer_state_bytes(sizes, "adamw", torch.float32)
    bf16 = optimizer_state_bytes(sizes, "adamw", torch.bfloat16)
    q8 = optimizer_state_bytes(sizes, "adamw_8bit")
    print(f"Llama-3-8B {method:4s} ({sum(sizes):,} trainable): AdamW states fp32 {fp32 / GiB:7.3f} GiB, "
          f"bf16 {bf16 / GiB:7.3f} GiB, 8-bit {q8 / GiB:7.3f} GiB ({q8 / fp32:.3f} of fp32)")
    claim("   8-bit states save {vs_fp32:.3f} GiB against fp32 states and {vs_bf16:.3f} GiB against bf16 states",
          q8 < bf16 < fp32, vs_fp32=(fp32 - q8) / GiB, vs_bf16=(bf16 - q8) / GiB)
print(f"lesson ran in {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Exercises
#
# - `pytest exercises -m ex4_3` — build the dynamic map and quantize a block with it
#   (`exercises/week4/ex4_3_dynamic_map.py`)
# - `pytest exercises -m ex4_4` — one 8-bit Adam update (`exercises/week4/ex4_4_adam8bit_update.py`)
#
# ## Journal prompt
#
# Which of your model's tensors would keep 32-bit states under `min_8bit_size = 4096`, and how many bytes does that
# rule cost? Explain in your own words why bitsandbytes' CPU grid, an approximation, keeps 8-bit Adam stable where
# exact rounding does not. When would you pick int8 weights over NF4?

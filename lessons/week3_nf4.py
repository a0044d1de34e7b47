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
# # Week 3 — NF4: four bits that keep the quality
#
# QLoRA stores the frozen base weights in 4 bits instead of 16 (how much of a whole fine-tune's memory that is
# depends on the other piles — gradients, optimizer state, activations — which week 4 computes). Four bits give
# 16 values. Which 16? QLoRA's answer, **NormalFloat 4 (NF4)**, puts them where a normal distribution puts its
# mass, because that is what pretrained weights look like. This lesson derives the 16 levels, turns a real weight
# matrix of SmolLM2 into bytes and back, and measures what it costs.
#
# **Goals.** By the end of this lesson you can
#
# 1. derive NF4's 16 levels from quantiles of N(0, 1) and check them against the published table;
# 2. quantize a block: absmax scale, nearest level, two codes per byte — byte for byte what bitsandbytes stores;
# 3. explain double quantization and compute the bits a parameter really costs (4.5 → ~4.127);
# 4. compare NF4 with plain uniform int4 on SmolLM2's weights, and measure SmolLM2's loss at full precision vs NF4;
# 5. read the Triton dequantization kernel and the `Linear4bit` layer whose backward keeps no dense weight alive.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/kernels/utils.py` → `fast_dequantize` | NF4 → 16-bit just before a matmul (via bitsandbytes' CUDA kernels) | `minilora/kernels/nf4_dequant.py` (Triton + reference) |
# | `unsloth/kernels/utils.py` → `QUANT_STATE` | reads a weight's quantization state (absmax, nested state, offset) | `minilora/quant/blockwise.py` → `NF4State`, `DoubleQuantState` |
# | `unsloth/kernels/utils.py` → `get_lora_parameters` | pulls W (or its 4-bit state), A, B and the scale out of a LoRA layer | `minilora/lora.py` → `lora_weights` |
# | `unsloth/kernels/utils.py` → `matmul_lora` | dequantize W, then $XW + s\,XAB$ | `minilora/kernels/fast_lora.py` → `_lora_forward`, `base_weight` (week 5); `minilora/linear4bit.py` → `Linear4bit` |
# | `unsloth/models/loader.py` (`load_in_4bit=True`) | loads the base model in 4 bits through bitsandbytes | `minilora/linear4bit.py` → `quantize_model` (called by `FastLanguageModel.from_pretrained`) |
# | bitsandbytes `functional.quantize_4bit` / `dequantize_4bit` | the NF4 format itself | `minilora/quant/nf4.py`, `minilora/quant/blockwise.py` |

# %%
import logging
import os
import time

import matplotlib.pyplot as plt
import torch

if not torch.cuda.is_available():  # no GPU: Triton kernels run in its interpreter (set before Triton is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks.harness import COPY_IMPL, latest, load_results, speed_word
from minilora import FastLanguageModel, linear4bit
from minilora.linear4bit import Linear4bit, quantize_model
from minilora.memory import SavedTensorMeter
from minilora.prose import claim
from minilora.quant import (
    NF4_CODEBOOK,
    blockwise,
    dequantize_nf4_reference,
    derive_nf4_codebook,
    nf4,
    nf4_offset,
    quantize_nf4,
    uniform_int4_codebook,
    unpack_nibbles,
)
from minilora.show import show

torch.manual_seed(0)
t_start = time.time()
for module in (nf4, blockwise, linear4bit):
    print(f"{module.__name__:28s} {module.__doc__.strip().splitlines()[0]}")

# %% [markdown]
# ## 1. The codebook, derived
#
# Scale a block of weights by its largest magnitude and every value lies in [-1, 1]. If the weights are roughly
# normal, the best 16 levels are **quantiles**: each level should be hit about equally often. QLoRA wants an exact
# zero too (padding and zero weights must stay zero), so it builds the table asymmetrically: 8 positive levels from
# 8 quantiles, 7 negative from 7, one 0, then normalises to [-1, 1]. The largest probability used, `offset`, stays
# away from 1 (where $\Phi^{-1}$ is infinite). Here is the library's derivation:

# %%
show(nf4.nf4_offset)
show(nf4.derive_nf4_codebook)

# %%
derived = derive_nf4_codebook()
print(f"offset = {nf4_offset():.7f}")
print(f"{'i':>2s} {'derived':>12s} {'published':>12s} {'difference':>11s}")
for i, (d, p) in enumerate(zip(derived.tolist(), NF4_CODEBOOK.tolist())):
    print(f"{i:2d} {d:12.8f} {p:12.8f} {d - p:11.2e}")
max_diff = (derived.float() - NF4_CODEBOOK).abs().max().item()
print(f"largest difference: {max_diff:.2e} (float32 rounding of the published values)")

# %%
xs = torch.linspace(-3.2, 3.2, 400)
pdf = torch.exp(-xs ** 2 / 2) / (2 * torch.pi) ** 0.5
scale = torch.special.ndtri(torch.tensor(nf4_offset(), dtype=torch.float64)).item()  # where level 1.0 sits on N(0,1)
fig, ax = plt.subplots(1, 2, figsize=(11, 3.2))
ax[0].plot(xs, pdf, color="gray")
for v in NF4_CODEBOOK.tolist():
    ax[0].axvline(v * scale, color="tab:blue", lw=1)
ax[0].set_title("N(0,1) and the 16 NF4 levels (× Φ⁻¹(offset))")
ax[1].plot(range(16), NF4_CODEBOOK, "o-", label="NF4")
ax[1].plot(range(16), uniform_int4_codebook(), "s--", label="uniform int4")
ax[1].set_xlabel("4-bit index")
ax[1].set_title("levels: dense near 0, sparse in the tails")
ax[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. A real weight becomes bytes
#
# Load SmolLM2-135M (the bundled GGUF) and take one block of 64 values from layer 0's `q_proj`. Quantizing it
# works in three parts: the block's absmax, each value divided by it, the index of the nearest level (a value goes
# to level $i$ when it lies between the midpoints around $i$). Two indices share a byte, the first in the high
# nibble — the order bitsandbytes uses, so the bytes can be compared with its own.

# %%
model, tokenizer = FastLanguageModel.from_pretrained("smollm2", dtype="float32", device="cpu")
W = model.model.layers[0].self_attn.q_proj.weight.detach()
print(f"q_proj weight {tuple(W.shape)}, {W.numel():,} values, {W.numel() * 2 / 2**20:.2f} MiB at 16 bits")
block = W.reshape(-1)[:64]
state = quantize_nf4(block, blocksize=64)
indices = unpack_nibbles(state.codes, 64).long()  # uint8 → int64: a uint8 index tensor would act as a mask
print(f"absmax = {state.absmax.item():.5f}")
for k in range(4):
    v = block[k].item()
    print(f"value {v:+.5f} → scaled {v / state.absmax.item():+.4f} → index {indices[k].item():2d} "
          f"(level {NF4_CODEBOOK[indices[k]].item():+.4f})")
print("first bytes:", " ".join(f"{b:02x}" for b in state.codes[:4].tolist()),
      f"(= indices {indices[:8].tolist()} two per byte)")

# %%
show(blockwise.quantize_nf4)
show(blockwise.pack_nibbles)

# %% [markdown]
# bitsandbytes is an independent check: on CPU its `quantize_4bit` produces the same bytes and absmax values
# (minilora's tests check this bit for bit over random shapes, block sizes and dtypes).

# %%
full_state = quantize_nf4(W, 64)
# on CPUs with AVX-512 bf16, importing bitsandbytes warns that an optional download-only CPU kernel is missing;
# the byte format this cell compares does not use it
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
try:
    import bitsandbytes.functional as bnbF
    packed, qs = bnbF.quantize_4bit(W, blocksize=64, quant_type="nf4")
    print("bytes equal bitsandbytes':", torch.equal(packed.reshape(-1), full_state.codes),
          "| absmax equal:", torch.equal(qs.absmax, full_state.absmax))
except ImportError:
    print("bitsandbytes is not installed here (it is a dev dependency): skipping the cross-check")

# %% [markdown]
# ## 3. Back to floats, and what a parameter costs
#
# Dequantizing is a table lookup times the block's absmax. Per parameter that is 4 bits of code plus the block's
# share of its float32 absmax: 32/64 = 0.5 bits. **Double quantization** stores the absmax values themselves in
# 8 bits (centred on their mean, in groups of 256 with one float32 scale each): 8/64 + 32/(64·256) ≈ 0.127 bits.

# %%
back = dequantize_nf4_reference(full_state, torch.float32)
dq_state = quantize_nf4(W, 64, double_quant=True)
back_dq = dequantize_nf4_reference(dq_state, torch.float32)
rel = lambda a: ((a - W).norm() / W.norm()).item()
print(f"plain:        {full_state.bits_per_param():.4f} bits/param, relative error {rel(back):.4f}")
print(f"double-quant: {dq_state.bits_per_param():.4f} bits/param, relative error {rel(back_dq):.4f}")
print(f"the extreme value of each block comes back exactly: "
      f"{bool(torch.equal(back.reshape(-1, 64).abs().amax(1), W.reshape(-1, 64).abs().amax(1)))}")

# %% [markdown]
# ## 4. SmolLM2's weights against the levels, and NF4 vs uniform int4
#
# Are the block-scaled weights really normal-shaped? The histogram below pools the scaled values of every block
# of a few layers; the blue lines are NF4's levels, the dashed ones uniform int4's. Then both codebooks quantize
# the block linears of every third layer (same block size, same absmax), and we compare the error.

# %%
def scaled_values(w, blocksize=64):
    blocks = w.reshape(-1, blocksize)
    return (blocks / blocks.abs().amax(1, keepdim=True)).reshape(-1)


def codebook_error(w, codebook, blocksize=64):
    """Relative RMS error of blockwise absmax quantization of w with any sorted 16-level codebook."""
    blocks = w.reshape(-1, blocksize)
    absmax = blocks.abs().amax(1, keepdim=True)
    idx = torch.bucketize(blocks / absmax, (codebook[:-1] + codebook[1:]) / 2)
    return ((codebook[idx] * absmax - blocks).norm() / blocks.norm()).item()


sample = torch.cat([scaled_values(model.model.layers[i].mlp.up_proj.weight.detach()) for i in (0, 10, 20)])
plt.figure(figsize=(10, 3.2))
plt.hist(sample.numpy(), bins=200, color="lightgray", density=True)
for v in NF4_CODEBOOK.tolist():
    plt.axvline(v, color="tab:blue", lw=1)
for v in uniform_int4_codebook().tolist():
    plt.axvline(v, color="tab:orange", lw=0.8, ls="--")
plt.title("block-scaled SmolLM2 up_proj weights (layers 0, 10, 20); blue NF4, orange dashed uniform int4")
plt.show()

# %%
errors = {"nf4": [], "int4": []}
names = []
for i, layer in enumerate(model.model.layers):
    if i % 3:  # every third block (10 of the 30) keeps the lesson fast
        continue
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        w = layer.get_submodule(f"{'self_attn' if name[0] in 'qkvo' else 'mlp'}.{name}").weight.detach()
        errors["nf4"].append(codebook_error(w, NF4_CODEBOOK))
        errors["int4"].append(codebook_error(w, uniform_int4_codebook()))
        names.append(f"{i}.{name}")
nf4_mean = sum(errors["nf4"]) / len(names)
int4_mean = sum(errors["int4"]) / len(names)
wins = sum(a < b for a, b in zip(errors["nf4"], errors["int4"]))
print(f"{len(names)} matrices: mean relative error NF4 {nf4_mean:.4f}, uniform int4 {int4_mean:.4f}; "
      f"NF4 is better on {wins} of {len(names)}")
plt.figure(figsize=(10, 3))
plt.plot(errors["int4"], label="uniform int4", lw=1)
plt.plot(errors["nf4"], label="NF4", lw=1)
plt.xlabel("block linear (layer-major order)")
plt.ylabel("relative RMS error")
plt.legend()
plt.show()

# %% [markdown]
# ## 5. What it costs: SmolLM2's loss on held-out text, 16-bit vs NF4
#
# `quantize_model` turns every linear layer of the 30 blocks into a `Linear4bit` (the embedding, norms and the
# tied head stay as they are), exactly what `FastLanguageModel.from_pretrained(..., load_in_4bit=True)` does. The
# text below is not from SmolLM2's chat data: a short factual paragraph. The reference runs the dense weights in
# fp32 and, through `torch.autocast`, with 16-bit (bf16) matmuls.

# %%
held_out = ("The Danube is the second-longest river in Europe. It rises in the Black Forest in Germany and flows "
            "southeast for about 2,850 kilometres, passing through four capital cities before it empties into "
            "the Black Sea through a wide delta in Romania and Ukraine. For centuries it has carried trade, and "
            "today it is an important waterway for ships carrying grain, steel and fuel.")
ids = torch.tensor([tokenizer.encode(held_out)])
with torch.no_grad():
    loss_full = model(ids, labels=ids).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmuls in 16-bit, as a GPU run would do them
        loss_16 = model(ids, labels=ids).loss.float().item()
    t0 = time.time()
    quantize_model(model)  # in place: every block linear becomes NF4 + double quantization
    t_quant = time.time() - t0
    loss_nf4 = model(ids, labels=ids).loss.item()
n4 = sum(isinstance(m, Linear4bit) for m in model.modules())
print(f"{ids.shape[1]} tokens; quantized {n4} linear layers in {t_quant:.1f} s")
print(f"loss fp32           {loss_full:.4f} (perplexity {torch.tensor(loss_full).exp():.2f})")
print(f"loss 16-bit (bf16)  {loss_16:.4f} (perplexity {torch.tensor(loss_16).exp():.2f})")
print(f"loss NF4            {loss_nf4:.4f} (perplexity {torch.tensor(loss_nf4).exp():.2f}), "
      f"+{loss_nf4 - loss_16:.4f} nats over 16-bit")

# %% [markdown]
# The cell above shows the price on a 135M-parameter model; this lesson measures no larger one. SmolLM2's bundled
# weights were already 4-bit (GGUF Q4_1) once, so NF4 rounds them onto a second grid. QLoRA trains LoRA adapters on
# top of the quantized base; how much of this error they make up for is not measured here.
#
# ## 6. The Triton kernel, and what it reaches on a GPU
#
# On the GPU every forward and backward dequantizes each weight, so the dequantization must run at memory speed.
# The kernel reads a tile of whole blocks (bytes), looks up both nibbles' levels, multiplies by the block's scale
# (rebuilt from the double-quantized state when needed), and writes the values in their original order.

# %%
from minilora.kernels import nf4_dequant

show(nf4_dequant._nf4_dequant_kernel.fn)

# %% [markdown]
# On a laptop the kernel runs in Triton's interpreter (slow, but exact). It matches the reference:

# %%
small = quantize_nf4(W[:32], 64, double_quant=True)
if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    tri = nf4_dequant.dequantize_nf4_triton(small.to("cuda") if torch.cuda.is_available() else small,
                                            torch.float32).cpu()
    print("Triton == reference:", torch.equal(tri, dequantize_nf4_reference(small, torch.float32)))
else:
    print("Triton was imported before TRITON_INTERPRET=1 was set: restart and run from the top")

# %% [markdown]
# The benchmark (`benchmarks/bench_nf4.py`) dequantizes a 14336×4096 weight (Llama-3-8B's MLP) to bf16 on the GPU
# machine, beside bitsandbytes and a bf16 copy of the same weight, in one run. Throughput counts the bytes read
# (codes and scales) and written (bf16 values). The recorded results:

# %%
rec_path = latest("benchmarks/results", "nf4-dequant")
rec = load_results(rec_path)
v = rec["versions"]
print(f"{rec_path.name}: card {rec['card']}, torch {v.get('torch')}, triton {v.get('triton')}, bitsandbytes "
      f"{v.get('bitsandbytes')}, {rec['date']}" + (f" — {rec['provenance']}" if rec.get("provenance") else ""))
print(rec["notes"])
bars = {}
for tag in ("plain absmax", "double-quant"):
    for impl, label in (("minilora triton", "minilora"), ("bitsandbytes dequantize_4bit", "bnb"),
                        ("torch reference", "torch reference")):
        r = next((x for x in rec["rows"] if x["name"] == f"nf4 dequant ({tag})" and x["impl"] == impl and x["reps"]),
                 None)
        if r:
            bars[f"{label} {tag}"] = r
copy = next(x for x in rec["rows"] if x["impl"] == COPY_IMPL and x["reps"])
bars = {"copy (ceiling)": copy, **bars}
for k, r in bars.items():
    span = "range not recorded" if r.get("converted") else f"[{r['min_ms'] * 1e3:.1f}–{r['max_ms'] * 1e3:.1f}] us"
    print(f"{k:34s} {r['tb_s']:5.2f} TB/s  {r['median_ms'] * 1e3:7.1f} us {span}")
for tag in ("plain absmax", "double-quant"):
    ours, theirs = bars.get(f"minilora {tag}"), bars.get(f"bnb {tag}")
    if ours and theirs:
        ratio = theirs["median_ms"] / ours["median_ms"]
        print(f"{tag}: minilora's kernel at its shipped settings runs at {ratio:.2f}x bitsandbytes' speed "
              f"({speed_word(ours, theirs)} bitsandbytes), {ours['pct_of_copy']:.0f}% of the copy's bandwidth against bitsandbytes' "
              f"{theirs['pct_of_copy']:.0f}%")
    ref = bars.get(f"torch reference {tag}")
    if ours and ref:
        print(f"    against the plain-PyTorch reference: {ref['median_ms'] / ours['median_ms']:.1f}x its speed")
plt.figure(figsize=(9, 3))
plt.barh(list(bars), [r["tb_s"] for r in bars.values()],
         color=["gray" if "copy" in k or "reference" in k else "tab:blue" if "minilora" in k else "tab:orange"
                for k in bars])
plt.xlabel("TB/s at the bytes moved, median (higher is better)")
plt.title(f"NF4 dequant {rec['config']['shape'][0]}×{rec['config']['shape'][1]} → bf16 on {rec['card']}")
plt.gca().invert_yaxis()
plt.show()

# %% [markdown]
# What the plot says: the lines printed above compare minilora's kernel with bitsandbytes' hand-written CUDA, and
# both with the copy ceiling, on this card; the whole sweep of tile sizes and lookup strategies is in the results
# file (the `nf4 sweep` rows). Next to the unfused PyTorch reference (several full passes in float32) the last
# lines say how much a single fused pass gains.
#
# ## 7. `Linear4bit`: dequantize in forward, and again in backward
#
# The input gradient needs the weight: $dX = dY\,W$. Keeping the dequantized W from the forward until the
# backward would keep 16 bits a parameter alive — the very memory NF4 is there to remove. So the autograd Function saves *nothing*
# and dequantizes a second time in backward:

# %%
show(linear4bit._DequantMatmul)

# %%
layer = Linear4bit.from_linear(torch.nn.Linear(576, 1536, bias=False))
x = torch.randn(4, 576, requires_grad=True)
with SavedTensorMeter(layer) as saved:  # the layer's own codes and scales are not counted
    y = layer(x)
y.sum().backward()
dense = 576 * 1536 * 4  # the float32 weight a plain autograd backward would keep
claim("the layer saves {saved:,} bytes for its backward (at most its input), never the {dense:,}-byte dense "
      "weight; dX still comes out with shape {shape}", saved.bytes < dense and saved.bytes <= x.numel() * 4,
      saved=saved.bytes, dense=dense, shape=list(x.grad.shape))
print(f"lesson ran in {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Exercises
#
# - `pytest -m ex3_4` — derive the codebook (`exercises/week3/ex3_4_nf4_codebook.py`)
# - `pytest -m ex3_5` — quantize one block (`exercises/week3/ex3_5_quantize_block.py`)
# - `pytest -m ex3_6` — pack and unpack nibbles (`exercises/week3/ex3_6_pack_nibbles.py`)
# - `pytest -m ex3_7` — dequantize (`exercises/week3/ex3_7_dequantize.py`)
#
# ## Journal prompt
#
# Why does NF4 beat uniform int4 on these weights — and in which layers did it win by the most (look at the error
# plot)? If you had 5 bits instead of 4, would you spend the extra bit on more levels or on smaller blocks? Use
# the bits-per-parameter formula to compare the two options.

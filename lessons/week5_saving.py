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
# # Week 5 — Saving, merging and GGUF
#
# A fine-tune is only useful once it leaves the training script. There are three ways out, and each is a
# trade-off: the adapter alone (tiny, needs the base model), the merged model (one ordinary checkpoint any tool
# opens), and GGUF (one file for llama.cpp-style runtimes, often quantized).
#
# **Goals.** By the end of this lesson you can
#
# 1. write the merge $W' = W + \frac{\alpha}{r} BA$ and say why it is computed in fp32;
# 2. explain, with numbers measured here, why merging into a 4-bit model adds error to the update;
# 3. read a GGUF file's layout: metadata, tensor table, types and the q/k row permutation;
# 4. reload each format and check it computes what the trained model computed.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/save.py` → `unsloth_save_model`, `save_pretrained_merged` | LoRA / merged_16bit / merged_4bit | `minilora/save.py` → `save_pretrained_merged`, `merged_state_dict` |
# | `unsloth/save.py` → `_merge_lora` | $W + s\,BA$ in fp32, dequantizing a 4-bit W first | `minilora/save.py` → `merged_state_dict` (uses `dense_weight`) |
# | `unsloth/save.py` → `save_to_gguf` (calls llama.cpp's converter) | GGUF F16 / Q8_0 / … | `minilora/save.py` → `save_gguf` (through the `gguf` package) |
# | PEFT's `save_pretrained` / `PeftModel.from_pretrained` | the adapter on disk | `minilora/io/adapters.py` |
#
# The cell below prints the first line of each minilora file's docstring.

# %%
import ast
import json
import pathlib
import time

import matplotlib.pyplot as plt
import torch

torch.manual_seed(0)
for path in ["minilora/save.py", "minilora/io/adapters.py", "minilora/io/gguf.py"]:
    doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
    print(f"{path:26s} {doc.splitlines()[0]}")

# %% [markdown]
# ## 1. The merge arithmetic
#
# A LoRA layer computes $Wx + \frac{\alpha}{r} B(Ax)$. Since matrix products distribute, that is
# $(W + \frac{\alpha}{r} BA)\,x$: one matrix, the original layer's cost at inference. The cell below checks the
# identity on a random layer. Then it measures what the *format of the saved file* does to the update: ΔW is small
# next to W, and a 16-bit number keeps only so many significant bits of their sum. `merged_state_dict` adds in fp32
# and casts once; the cell compares how much of ΔW survives that cast to float16 (10 mantissa bits) and to
# bfloat16 (7 mantissa bits).

# %%
from minilora.lora import LoraLinear
from minilora.show import show

layer = LoraLinear(torch.nn.Linear(576, 1536, bias=False), r=16, lora_alpha=32)
torch.nn.init.normal_(layer.lora_B.weight, std=2e-3)  # what a short fine-tune leaves behind, roughly
x = torch.randn(4, 576)
merged = layer.base_layer.weight + layer.delta_weight()
print(f"LoRA output vs merged-weight output: max diff {(layer(x) - x @ merged.T).abs().max():.2e}")
W, dW = layer.base_layer.weight.detach(), layer.delta_weight().detach()
print(f"|dW| / |W| = {(dW.norm() / W.norm()).item():.4f}")
for dtype in (torch.float16, torch.bfloat16):
    stored = (W + dW).to(dtype).float()  # what the merged file holds
    base = W.to(dtype).float()  # the same base weight, as a 16-bit file of the base model holds it
    err = ((stored - base - dW).norm() / dW.norm()).item()
    print(f"{str(dtype):15s}: the update read back from the file is off by {100 * err:.1f}% of |dW|")
show(LoraLinear.delta_weight)

# %% [markdown]
# ## 2. Fine-tune something worth saving
#
# We need a real adapter to measure what saving does to it. The next cell fine-tunes SmolLM2-135M-Instruct with
# LoRA on the bundled dates task for a few steps (the cell prints how many, and how long they took here) and
# scores 20 held-out dates.

# %%
from minilora import FastLanguageModel
from minilora.train import Trainer, TrainingArguments, build_examples, dates_task

model, tokenizer = FastLanguageModel.from_pretrained("smollm2", device="cpu")
train_records, held = dates_task.make_splits(480, 20, seed=0)
model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, use_gradient_checkpointing=False)
STEPS = 8
started = time.perf_counter()
Trainer(model, TrainingArguments(output_dir="runs/week5/out", overwrite_output_dir=True,  # re-runs replace the run
                                 per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=STEPS,
                                 warmup_steps=2, learning_rate=1e-3, progress_bar=False),
        build_examples(train_records, tokenizer, 128), pad_token_id=tokenizer.pad_token_id).train()
model.eval()
score = {"LoRA (fp32 base + adapter)": dates_task.exact_match(model, tokenizer, held)[0]}
print(f"trained {STEPS} steps in {time.perf_counter() - started:.0f} s; held-out exact match {score}")

# %% [markdown]
# ## 3. Three ways to save, and what each computes
#
# The next cell saves the adapter, the merged 16-bit model and the merged 4-bit model, reloads each, and scores
# the same 20 dates. `merged_4bit` stores every merged linear weight (all but `lm_head`) as NF4 codes with
# double-quantized scales, in the layout transformers + bitsandbytes write for a `load_in_4bit` model
# (`minilora/io/bnb4bit.py`): `from_pretrained` opens it as a 4-bit model, and minilora's loader reads it back by
# dequantizing. The embedding and the norms stay 16-bit, as they do in QLoRA.

# %%
from minilora.save import save_pretrained_merged

OUT = pathlib.Path("runs/week5")
sizes = {}
for method in ("lora", "merged_16bit", "merged_4bit"):
    save_pretrained_merged(model, tokenizer, str(OUT / method), method, base_model_name_or_path="smollm2",
                           overwrite=True)  # replace what an earlier run of this lesson saved
    sizes[method] = sum(f.stat().st_size for f in (OUT / method).iterdir()) / 1e6
    if method != "lora":
        reloaded, _ = FastLanguageModel.from_pretrained(str(OUT / method), device="cpu", dtype="float32")
        score[method] = dates_task.exact_match(reloaded, tokenizer, held)[0]
        del reloaded
for name, s in score.items():
    print(f"{name:28s} {s}/{len(held)} exact")
print({k: f"{v:.1f} MB" for k, v in sizes.items()})
print(f"merged_4bit is {sizes['merged_4bit'] / sizes['merged_16bit']:.1%} of merged_16bit's size")

# %% [markdown]
# What is in the 4-bit file, and how many bits a linear weight costs there (codes, 8-bit absmax codes, their
# scales, the two lookup tables and a small JSON quant state per weight), against 16:

# %%
from safetensors import safe_open

from minilora.save import merged_state_dict, quantizable_weights

names = quantizable_weights(model, merged_state_dict(model))
with safe_open(str(OUT / "merged_4bit" / "model.safetensors"), "pt") as f:
    keys = list(f.keys())
    one = names[0]
    for k in (k for k in keys if k.startswith(one)):
        t = f.get_tensor(k)
        print(f"{k:75s} {str(t.dtype):14s} {tuple(t.shape)}")
    print(json.loads(bytes(f.get_tensor(f"{one}.quant_state.bitsandbytes__nf4").tolist())))
    quant_bytes = sum(f.get_tensor(k).nbytes for k in keys if k.split(".weight")[0] + ".weight" in names)
n_linear = sum(p.numel() for n, p in model.named_parameters() if n.replace(".base_layer", "") in names)
print(f"{len(names)} linear weights, {n_linear:,} parameters: {8 * quant_bytes / n_linear:.3f} bits each in the "
      f"4-bit file, against 16 in merged_16bit")
print(json.loads((OUT / "merged_4bit" / "config.json").read_text())["quantization_config"])

# %% [markdown]
# ## 4. Why merging into 4-bit loses accuracy
#
# NF4 stores each block of 64 weights as 16 levels scaled by the block's largest |w|. The gap between two
# neighbouring levels — the step — is huge next to a LoRA update. Rounding $W + \Delta W$ to NF4 therefore moves
# each weight by up to half a step: an error that has nothing to do with the update and is many times its size.
# The cell below measures, for one trained layer: the NF4 step next to $|\Delta W|$; how many
# 4-bit codes the update changes at all; and the size of the rounding error of the merged weight, relative to
# the update it was supposed to carry — both from the fp32 weights trained here, and in the QLoRA case, where the
# base already sits on the 4-bit grid and only $\Delta W$ is new.

# %%
from minilora.lora import lora_layers
from minilora.quant.blockwise import quantize_nf4, unpack_nibbles
from minilora.save import nf4_round_trip


def codes(w):
    return unpack_nibbles(quantize_nf4(w).codes, w.numel())


name, trained = lora_layers(model)[3 * 7 + 5]  # layer 3's up_proj
W = trained.base_layer.weight.detach()
dW = trained.delta_weight().detach()
absmax = W.reshape(-1, 64).abs().amax(1)
step = (absmax * 2 / 15).median()  # NF4 levels span [-absmax, absmax]: about 15 gaps, denser near 0
print(f"{name}: median |dW| {dW.abs().median():.2e}, median NF4 step {step:.2e} ({step / dW.abs().median():.0f}x)")
print(f"4-bit codes that dW changes: {100 * (codes(W + dW) != codes(W)).float().mean():.2f}%")
noise = nf4_round_trip(W + dW) - (W + dW)
print(f"merged_4bit from fp32 weights: rounding error = {noise.norm() / dW.norm():.1f}x |dW|")
Wq = nf4_round_trip(W)  # a QLoRA base: already on the grid
noise_q = nf4_round_trip(Wq + dW) - (Wq + dW)
print(f"merged_4bit after QLoRA (base on the grid): rounding error = {noise_q.norm() / dW.norm():.1f}x |dW|; "
      f"codes changed {100 * (codes(Wq + dW) != codes(Wq)).float().mean():.2f}%")
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(dW.flatten().numpy(), bins=100, alpha=0.7, label="ΔW entries")
ax.axvline(step.item() / 2, color="C3", ls="--", label="half an NF4 step")
ax.axvline(-step.item() / 2, color="C3", ls="--")
ax.set(xlabel="value", ylabel="count", title=f"{name.split('model.')[-1]}: the update is far below the 4-bit step")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# That is why Unsloth trains QLoRA on a 4-bit base but saves `merged_16bit` by default: the adapter was fitted to
# the base's 4-bit rounding, and a 16-bit copy keeps the update up to the 16-bit rounding measured in section 1,
# while re-rounding the merged weight to 4-bit either leaves it nearly unchanged (most codes do not move: the update
# is lost) or adds rounding error larger than the update. Section 3's exact-match table is one small data point
# on this task, from the fp32-base LoRA run trained here (not a QLoRA run): 20 held-out dates, scored once.
#
# ## 5. GGUF: one self-describing file
#
# A GGUF file is a header, key/value metadata (architecture numbers, the tokenizer's vocabulary and merges, the
# chat template) and a table of tensors, each with a name, a shape (fastest-varying dimension first) and a type.
# Q8_0 stores blocks of 32 values as 32 int8 codes and one fp16 scale: 34 bytes per 32 values. The next cell
# exports the fine-tune as Q8_0 and prints the layout.

# %%
import gguf

from minilora.save import save_gguf

path = OUT / "model-q8_0.gguf"
save_gguf(model, tokenizer, str(path), "q8_0", overwrite=True)
reader = gguf.GGUFReader(str(path))
print(f"{path}: {path.stat().st_size / 1e6:.1f} MB, {len(reader.fields)} metadata keys, {len(reader.tensors)} tensors")
for key in list(reader.fields)[:14]:
    field = reader.fields[key]
    value = field.contents() if not key.startswith("tokenizer.ggml.") else f"[{len(field.data)} items]"
    print(f"  {key:42s} {str(value)[:60]}")
for t in reader.tensors[:6]:
    shape = [int(n) for n in t.shape]  # fastest-varying dimension first: (in, out) for a weight
    print(f"  {t.name:24s} {t.tensor_type.name:5s} shape {shape} -> {int(t.n_bytes):,} bytes at {int(t.data_offset):,}")

# %% [markdown]
# **The q/k permutation.** llama.cpp applies RoPE to *adjacent pairs* of a head's dimensions, Hugging Face-style
# code to *the two halves*. Both are the same rotation if the rows of $W_q$ and $W_k$ are reordered, so the
# exporter permutes them (and the loader un-permutes). On one 8-dimensional head, row indices move like this:

# %%
from minilora.io.gguf import permute_qk, unpermute_qk

rows = torch.arange(8.0)[:, None]
print("rotate-half row order :", rows.flatten().int().tolist())
print("GGUF (interleaved)    :", permute_qk(rows, 1).flatten().int().tolist())
print("un-permuted back      :", unpermute_qk(permute_qk(rows, 1), 1).flatten().int().tolist())

# %% [markdown]
# ## 6. Reloading the GGUF
#
# minilora's loader reads the file back (dequantizing Q8_0 through `gguf`, un-permuting q/k). The cell below
# compares its logits on one prompt with the fine-tuned model's and scores the held-out dates again. (The test
# suite also loads these files with transformers' own GGUF loader and PEFT; see tests/test_save.py.)

# %%
from minilora.train.data import encode

back, back_tok = FastLanguageModel.from_pretrained(str(path), device="cpu")
prompt = back_tok.apply_chat_template(dates_task.prompt_messages(held[0]), add_generation_prompt=True,
                                     tokenize=False)
ids = torch.tensor([encode(back_tok, prompt)])
with torch.no_grad():
    diff = (back(ids).logits - model(ids).logits).abs().max().item()
print(f"max |logit difference| after the Q8_0 round trip: {diff:.3f}")
score["GGUF Q8_0 reloaded"] = dates_task.exact_match(back, back_tok, held)[0]
for name, s in score.items():
    print(f"{name:28s} {s}/{len(held)} exact")

# %% [markdown]
# ## Exercises
#
# - `pytest -m ex5_2` — merge an adapter into a base state dict by hand, key for key, as `save_pretrained_merged`
#   does (`exercises/week5/ex5_2_merge_adapter.py`).
#
# ## Journal prompt
#
# You trained with QLoRA (a 4-bit base) and want to serve the model. Which of the three saves do you choose for a
# GPU server, for a laptop with llama.cpp, and for sharing with a colleague who already has the base model — and
# what does each choice cost in megabytes and in accuracy, using the numbers measured above?

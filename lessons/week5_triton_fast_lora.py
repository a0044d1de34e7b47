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
# # Week 5 — Triton deep dive and the fused LoRA backward
#
# Two things make Unsloth's LoRA layers fast: small Triton kernels for the elementwise steps, and a backward pass
# written by hand for whole blocks of LoRA projections (the MLP, Q/K/V together, O) instead of leaving it to
# autograd. This lesson first takes the Triton programming model apart — program ids, blocks, masks, the launch
# grid — on a kernel small enough to trace by hand. Then it derives the LoRA backward (dX, dA, dB) on paper, checks
# it against autograd, and measures what writing it by hand saves.
#
# **Goals.** By the end you can
#
# 1. say which elements a Triton program touches, given its program id, block size and mask;
# 2. choose a launch grid (1-D for flat elementwise work, 2-D for rows × column blocks);
# 3. derive dX, dA and dB for $y = xW^\top + s\,(xA^\top)B^\top$ and check them against autograd;
# 4. explain which buffers the fused MLP backward reuses and measure the memory that saves;
# 5. walk through the Q/K/V backward: three projections of one input, one dx buffer, checked against autograd.
#
# Gradient checkpointing and CPU offload — the other half of Unsloth's `_utils.py` — have their own lesson,
# `week5_checkpointing`.
#
# **Where this lives in Unsloth, and in minilora.**
#
# | Unsloth (the learning plan's Phases 3 and 5) | what it does | minilora |
# |---|---|---|
# | `unsloth/kernels/fast_lora.py` → `LoRA_MLP`, `LoRA_QKV`, `LoRA_W`, `apply_lora_mlp_swiglu`, `apply_lora_qkv`, `apply_lora_o` | autograd Functions with a hand-written backward | `minilora/kernels/fast_lora.py` → `LoRA_MLP`, `LoRA_QKV`, `LoRA_O`, `apply_lora_mlp`, `apply_lora_projections` |
# | `unsloth/kernels/utils.py` → `get_lora_parameters`, `matmul_lora`, `fast_dequantize` | pull W, A, B, s out of a PEFT layer; x W + s x A B; NF4 → 16-bit just in time | `minilora/lora.py` → `lora_weights`; `_lora_forward`, `base_weight` in `kernels/fast_lora.py` |
# | `unsloth/kernels/swiglu.py` → the in-place backward | h, de, dg written over the input buffers | `_swiglu_backward_inplace_kernel` |
# | the model patching that routes layers to these | | `minilora/ops.py` → `fast_lora_on`, `lora_mlp`, `lora_projections` (the switch); `minilora/lora.py` → `project`, `swiglu_mlp` (called by `LlamaAttention.forward`, `LlamaMLP.forward`) |

# %%
import ast
import os
import pathlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import matplotlib.pyplot as plt
import triton
import triton.language as tl

for path in ["minilora/kernels/fast_lora.py", "minilora/ops.py", "minilora/lora.py"]:
    doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
    print(f"{path:32s} {doc.splitlines()[0]}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %% [markdown]
# ## 1. The Triton model: many copies of one small program
#
# A Triton kernel is a function that many *program instances* run at once. Each instance asks `tl.program_id(axis)`
# which one it is, computes the block of offsets it owns, and loads/stores whole blocks at a time. The launch
# `kernel[grid](...)` says how many instances run: `grid` is a tuple with one count per axis. Because the last block
# usually hangs over the end of the data, every load and store carries a **mask**; masked-off lanes read `other`
# and write nothing.
#
# The kernel below is a toy written for this lesson: each instance records which elements it handled, so we can
# *see* the grid. (The `@triton.jit` function must live at module level of a real file for compiled Triton; in the
# interpreter a notebook cell is fine.)

# %%
@triton.jit
def who_does_what_kernel(owner_ptr, n_elements, BLOCK: tl.constexpr):
    pid = tl.program_id(0)  # which instance am I: 0, 1, 2, ...
    offsets = pid * BLOCK + tl.arange(0, BLOCK)  # the BLOCK elements I own
    mask = offsets < n_elements  # the last block hangs over the end
    tl.store(owner_ptr + offsets, pid + tl.zeros([BLOCK], dtype=tl.int32), mask=mask)


n, BLOCK = 10, 4
grid = (triton.cdiv(n, BLOCK),)  # ceil(10 / 4) = 3 instances
owner = torch.full((n,), -1, dtype=torch.int32, device=DEVICE)
who_does_what_kernel[grid](owner, n, BLOCK=BLOCK)
print(f"n = {n}, BLOCK = {BLOCK}, grid = {grid}")
print("element :", list(range(n)))
print("program :", owner.tolist())
print(f"the last program's mask is {[(2 * BLOCK + i) < n for i in range(BLOCK)]}: "
      f"it writes {n - 2 * BLOCK} elements and leaves the rest alone")

# %% [markdown]
# Every elementwise kernel in minilora follows this pattern. Here is the one fast LoRA uses for the SwiGLU step of
# the MLP backward — a 1-D grid over the flattened (tokens × intermediate) arrays. Note the numbered steps: pick
# offsets (int64, since tokens × intermediate passes 2³¹ at real sizes), load and upcast to fp32, compute, cast on
# store.

# %%
from minilora.kernels import fast_lora
from minilora.show import show

show(fast_lora._swiglu_backward_inplace_kernel.fn)
show(fast_lora.swiglu_backward_inplace)

# %% [markdown]
# A **2-D grid** fits work shaped like rows × columns. The cross-entropy backward (week 3) launches
# `(rows, cdiv(V, BLOCK))`: `program_id(0)` picks the row, `program_id(1)` the block of columns, and a row's
# length need not be a multiple of BLOCK thanks to the mask. The cell shows the grid it would use for a few shapes:

# %%
from minilora.kernels import cross_entropy as ce

for rows, vocab in [(3, 423), (8192, 128_256)]:
    block = min(ce.BACKWARD_BLOCK, triton.next_power_of_2(vocab))
    print(f"logits {rows} x {vocab}: BLOCK {block} → grid ({rows}, {triton.cdiv(vocab, block)}) = "
          f"{rows * triton.cdiv(vocab, block):,} programs; the last column block has "
          f"{vocab - (triton.cdiv(vocab, block) - 1) * block} live lanes of {block}")

# %% [markdown]
# ## 2. The LoRA matmuls: keep them thin
#
# One LoRA projection computes $y = xW^\top + s\,(xA^\top)B^\top$ with x (N, in), W (out, in), A (r, in),
# B (out, r) and $s = \alpha / r$. The order of the products matters: $(xA^\top)$ is (N, r), tiny, and then
# $(xA^\top)B^\top$ is (N, out). Never form $BA$ (out × in, as big as W). minilora's forward helper adds the
# low-rank term *into* the base output with `addmm_` — no second (N, out) buffer:

# %%
show(fast_lora._lora_forward)
show(fast_lora.base_weight)

# %% [markdown]
# `base_weight` is where QLoRA plugs in: a dense 16-bit weight is handed over as it is; the quantization state of a
# 4-bit layer (`minilora.linear4bit.Linear4bit`) is dequantized **now** — in the forward, and again in the
# backward — so the 16-bit copy exists only while its matmul runs.
#
# ## 3. Deriving dX, dA, dB by hand
#
# For a matmul $Y = XM^\top$ the chain rule gives $dX = dY\,M$ and $dM = dY^\top X$ (shapes check it: dY is
# (N, out), M is (out, in)). Apply it to the two paths of the LoRA projection:
#
# - base path $xW^\top$: $dx \mathrel{+}= dy\,W$ (and no dW: W is frozen);
# - low-rank path: let $u = xA^\top$ (N, r) and $y_{lr} = s\,uB^\top$. Then $dB = s\,dy^\top u$ (out, r) and
#   $du = s\,dy\,B$ (N, r); from $u = xA^\top$: $dA = du^\top x = s\,(dy\,B)^\top x$ (r, in) and
#   $dx \mathrel{+}= du\,A = s\,(dy\,B)\,A$.
#
# $$ dx = dy\,W + s\,(dy\,B)\,A, \qquad dA = s\,(dy\,B)^\top x, \qquad dB = s\,dy^\top (x A^\top) $$
#
# Every intermediate is (N, r) or smaller except dx itself. minilora's backward helper is those three lines, with
# dx accumulated in place (`addmm_`) so that Q, K and V — or gate and up — all add into **one** dx buffer:

# %%
show(fast_lora._lora_backward)

# %% [markdown]
# Checked against autograd, in float64 so that any difference is a mistake, not rounding:

# %%
torch.manual_seed(0)
N, d_in, d_out, r, s = 7, 11, 13, 3, 2.0
x = torch.randn(N, d_in, dtype=torch.float64, requires_grad=True)
W = torch.randn(d_out, d_in, dtype=torch.float64)
A = torch.randn(r, d_in, dtype=torch.float64, requires_grad=True)
B = torch.randn(d_out, r, dtype=torch.float64, requires_grad=True)
dy = torch.randn(N, d_out, dtype=torch.float64)

(x @ W.T + s * (x @ A.T) @ B.T).backward(dy)  # autograd's answer

with torch.no_grad():  # base = (frozen weight, bias); use_kernel=False: plain PyTorch for float64
    dx, dA, dB = fast_lora._lora_backward(dy, x, x @ A.T, (W, None), A, B, s, None, False)  # ours, by hand
for name, mine, theirs in [("dx", dx, x.grad), ("dA", dA, A.grad), ("dB", dB, B.grad)]:
    print(f"{name}: shape {tuple(mine.shape)}, max |ours - autograd| = {(mine - theirs).abs().max().item():.1e}")

# %% [markdown]
# ## 4. The MLP: three projections, one SwiGLU, one backward
#
# The Llama MLP is $\mathrm{out} = \mathrm{down}(h)$, $h = \mathrm{silu}(e) \odot g$, $e = \mathrm{gate}(x)$,
# $g = \mathrm{up}(x)$, each projection a LoRA projection. Going backward:
#
# 1. down: $dh = d\mathrm{out}\,W_d + s_d (d\mathrm{out}\,B_d) A_d$ — the only new (N, I) buffer;
# 2. SwiGLU: $dg = dh \odot \mathrm{silu}(e)$, $de = dh \odot g \odot \sigma(e)(1 + e(1 - \sigma(e)))$; and
#    $h = \mathrm{silu}(e) \odot g$ is **recomputed** (it is needed for $dA_d = s_d (d\mathrm{out}\,B_d)^\top h$)
#    rather than kept alive since the forward. The kernel writes $h$, $de$, $dg$ over $dh$, $e$, $g$ — three
#    results, zero new buffers;
# 3. gate and up: two `_lora_backward` calls that add into one dx.
#
# Unsloth's `LoRA_MLP` does the same; here is minilora's:

# %%
show(fast_lora.LoRA_MLP.backward)

# %% [markdown]
# Does it equal autograd on the plain composition (what PEFT runs)? Here in float32 with the Triton kernel in the
# interpreter, on odd sizes:

# %%
from benchmarks.harness import latest, load_results, speed_word
from minilora import ops
from minilora.lora import LoraLinear, swiglu_mlp


def make_lora(d_in, d_out, r=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = LoraLinear(torch.nn.Linear(d_in, d_out, bias=False), r=r, lora_alpha=2 * r).to(DEVICE, dtype)
    torch.nn.init.normal_(layer.lora_B.weight, std=0.1)  # as after some training: B = 0 would hide terms
    layer.base_layer.requires_grad_(False)
    return layer


def peft_style_mlp(x, gate, up, down):
    return down(torch.nn.functional.silu(gate(x)) * up(x))


def lora_grads(layers):
    grads = [g for l in layers for g in (l.lora_A.weight.grad, l.lora_B.weight.grad)]
    for l in layers:
        l.zero_grad(set_to_none=True)
    return grads


C, I = 37, 91
layers = [make_lora(C, I, seed=1), make_lora(C, I, seed=2), make_lora(I, C, seed=3)]
x0 = torch.randn(2, 13, C, device=DEVICE)
d_out = torch.randn(2, 13, C, device=DEVICE)
xa, xb = x0.clone().requires_grad_(), x0.clone().requires_grad_()
with ops.use_kernels("triton"):
    swiglu_mlp(xa, *layers).backward(d_out)  # the fast path in kernel mode triton
fast_grads = lora_grads(layers)
peft_style_mlp(xb, *layers).backward(d_out)
auto_grads = lora_grads(layers)
print(f"dx: max |fast - autograd| = {(xa.grad - xb.grad).abs().max().item():.1e}")
for name, a, b in zip(["gate A", "gate B", "up A", "up B", "down A", "down B"], fast_grads, auto_grads):
    print(f"d{name:7s} max |fast - autograd| = {(a - b).abs().max().item():.1e}")

# %% [markdown]
# ## 5. Memory saved by reusing buffers, measured
#
# Two things decide a training step's memory here: what the forward **saves** for the backward (it lives from the
# forward until its backward runs — for every layer at once), and what the backward **allocates**. Both can be
# measured on a CPU with the library's meters: `minilora.memory.SavedTensorMeter` sees every tensor saved for
# backward (through `torch.autograd.graph.saved_tensors_hooks`, so including those of custom Functions), and
# `minilora.memory.AllocationLog`, a `TorchDispatchMode`, sees every new tensor an op returns:

# %%
from minilora.memory import AllocationLog, SavedTensorMeter

show(SavedTensorMeter, AllocationLog)


def measure(run_forward, layers):
    """(MiB saved for backward, excluding weights; MiB allocated by the backward)."""
    with SavedTensorMeter(*layers) as saved:
        out = run_forward()
    with AllocationLog() as counter:
        out.backward(torch.ones_like(out))
    return saved.bytes / 2**20, counter.bytes / 2**20


N_tok, C, I = 512, 256, 688  # a scaled-down MLP (Llama-3-8B's ratio I / C = 3.5)
layers = [make_lora(C, I, 8, 1), make_lora(C, I, 8, 2), make_lora(I, C, 8, 3)]
x0 = torch.randn(N_tok, C, device=DEVICE)
one_NI = N_tok * I * 4 / 2**20
results = {}
for name, fn, mode in [("PEFT-style (autograd)", lambda x: peft_style_mlp(x, *layers), "reference"),
                       ("fast LoRA_MLP", lambda x: swiglu_mlp(x, *layers), "triton")]:
    with ops.use_kernels(mode):
        results[name] = measure(lambda: fn(x0.clone().requires_grad_()), layers)
    lora_grads(layers)
print(f"one (tokens x intermediate) fp32 buffer = {one_NI:.2f} MiB")
for name, (saved, allocated) in results.items():
    print(f"{name:22s} saved for backward {saved:6.2f} MiB ({saved / one_NI:4.1f} buffers), "
          f"backward allocated {allocated:6.2f} MiB ({allocated / one_NI:4.1f} buffers)")
(peft_saved, peft_alloc), (fast_saved, fast_alloc) = results.values()
print(f"saved: {100 * (1 - fast_saved / peft_saved):.0f}% less; "
      f"allocated in backward: {100 * (1 - fast_alloc / peft_alloc):.0f}% less")

# %% [markdown]
# The cell above counts in units of one (tokens × intermediate) buffer, the size that matters. Autograd keeps the
# gate and up outputs, silu(e), h, and the inputs of each LoRA branch; the hand-written Function keeps e, g, x and
# three (N, r) products. In the backward, autograd allocates a fresh buffer for every gradient it forms, while the
# fused backward allocates dh once and overwrites dead buffers for everything else.
#
# ## 6. Q, K and V: three projections of one input, one dx
#
# Attention projects the same normed hidden states x three times. Each projection is the LoRA projection of
# section 3, so each contributes its own $dy\,W + s\,(dy\,B)\,A$ to the gradient of x, and x's gradient is their
# sum:
#
# $$ dx = \sum_{p \in \{q, k, v\}} dp\,W_p + s_p\,(dp\,B_p)\,A_p, \qquad dA_p = s_p\,(dp\,B_p)^\top x, \qquad
#    dB_p = s_p\,dp^\top (x A_p^\top) $$
#
# Left to autograd, each of the six terms of dx is a fresh (N, C) tensor, summed pairwise into more fresh tensors.
# `LoRA_QKV` (Unsloth's `apply_lora_qkv`) runs the three projections in one autograd Function: the forward reads x
# once and saves x and three thin (N, r) products; the backward starts dx with the first matmul and lets every
# later term add into that one buffer with `addmm_` (the `dx` argument of `_lora_backward` in section 3). O is the
# same Function with one projection (`LoRA_O`). The backward, shared by both:

# %%
show(fast_lora._LoRA_Projections.backward)

# %% [markdown]
# Checked against autograd in float64 (any difference is a mistake, not rounding), with the shapes of grouped-query
# attention (k and v narrower than q), through the entry point the model calls:

# %%
from minilora.kernels.fast_lora import LoraWeights, apply_lora_projections

torch.manual_seed(0)
N, C, r, outs = 9, 24, 4, {"q": 32, "k": 8, "v": 8}
x64 = torch.randn(N, C, dtype=torch.float64)
W = {p: torch.randn(o, C, dtype=torch.float64) for p, o in outs.items()}
AB = {p: (torch.randn(r, C, dtype=torch.float64, requires_grad=True),
          torch.randn(o, r, dtype=torch.float64, requires_grad=True)) for p, o in outs.items()}
scale = {"q": 2.0, "k": 0.5, "v": 1.0}
dys = [torch.randn(N, o, dtype=torch.float64) for o in outs.values()]


def qkv_grads(fused):
    x = x64.clone().requires_grad_()
    if fused:
        ys = apply_lora_projections(x, *(LoraWeights(W[p], None, *AB[p], scale[p]) for p in outs))
    else:  # what PEFT runs: three separate layers, autograd differentiates each
        ys = [x @ W[p].T + scale[p] * (x @ AB[p][0].T) @ AB[p][1].T for p in outs]
    sum((y * dy).sum() for y, dy in zip(ys, dys)).backward()
    grads = [x.grad] + [t.grad.clone() for p in outs for t in AB[p]]
    for p in outs:
        for t in AB[p]:
            t.grad = None
    return grads


names = ["dx"] + [f"d{t}_{p}" for p in outs for t in "AB"]
for name, a, b in zip(names, qkv_grads(True), qkv_grads(False)):
    print(f"{name:5s} {str(tuple(a.shape)):9s} max |LoRA_QKV - autograd| = {(a - b).abs().max().item():.1e}")

# %% [markdown]
# How many (N, C) tensors does each backward create? `AllocationLog` (section 5) records their shapes too.

# %%
for fused, label in [(False, "autograd (PEFT-style)"), (True, "LoRA_QKV")]:
    x = x64.clone().requires_grad_()
    ys = (apply_lora_projections(x, *(LoraWeights(W[p], None, *AB[p], scale[p]) for p in outs)) if fused
          else [x @ W[p].T + scale[p] * (x @ AB[p][0].T) @ AB[p][1].T for p in outs])
    loss = sum((y * dy).sum() for y, dy in zip(ys, dys))
    with AllocationLog() as seen:
        loss.backward()
    formed = [s for s in seen.shapes if s in {(o, C) for o in outs.values()}]
    print(f"{label:22s} new tensors the backward created: {seen.shapes.count((N, C))} of shape (N, C) = {(N, C)}, "
          f"{len(formed)} of shape (out, C)")
    for p in outs:
        for t in AB[p]:
            t.grad = None

# %% [markdown]
# ## 7. On a real GPU
#
# The recorded benchmark (`benchmarks/bench_ce_lora.py`, Llama-3-8B MLP shapes: C 4096, I 14336, r 16, 8192
# tokens, bf16) times forward + backward of the PEFT-style composition and of `LoRA_MLP` in alternation
# (`benchmarks/harness.py`: rotated rounds, the same number of calls each, median and [min–max]) and records the
# peak memory above what was allocated before the call. With a GPU the cell runs it live; otherwise it loads the
# newest record.

# %%
if torch.cuda.is_available():
    import subprocess
    import sys
    subprocess.run([sys.executable, "-m", "benchmarks.bench_ce_lora", "--only", "lora", "--out", "/tmp/lora-bench"],
                   check=True)
    result_path = latest("/tmp/lora-bench", "ce-lora")
else:
    result_path = latest("benchmarks/results", "ce-lora")
result = load_results(result_path)
rows = [r for r in result["rows"] if r["name"] == "LoRA MLP" and r["reps"]]
print(f"{result_path.name}: {result['card']}, torch {result['versions'].get('torch')}, triton "
      f"{result['versions'].get('triton')}, {result['date']}"
      + (f" — {result['provenance']}" if result.get("provenance") else ""))
for r in rows:
    span = "range not recorded" if r.get("converted") else f"[{r['min_ms']:.2f}–{r['max_ms']:.2f}]"
    print(f"{r['impl']:32s} {r['median_ms']:7.2f} ms {span:>19s}  {r['peak_gib']:6.3f} GiB peak extra")
peft = next(r for r in rows if r["impl"].startswith("PEFT"))
fast = next(r for r in rows if r["impl"].startswith("minilora"))
speed, saved = peft["median_ms"] / fast["median_ms"], 1 - fast["peak_gib"] / peft["peak_gib"]
print(f"fast LoRA MLP: {speed:.2f}x the PEFT-style speed ({speed_word(fast, peft)} it), {abs(saved):.0%} "
      f"{'less' if saved > 0 else 'more'} peak memory")

fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].barh([r["impl"] for r in rows], [r["median_ms"] for r in rows], color=["tab:gray", "tab:orange"],
             xerr=[[r["median_ms"] - r["min_ms"] for r in rows], [r["max_ms"] - r["median_ms"] for r in rows]])
axes[0].set_xlabel("ms, forward + backward: median [min–max]")
axes[1].barh([r["impl"] for r in rows], [r["peak_gib"] for r in rows], color=["tab:gray", "tab:orange"])
axes[1].set_xlabel("peak extra GiB")
fig.suptitle(f"LoRA MLP, {rows[0].get('shape', '')} — {result['card']}, {result['date'][:10]}", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Both versions run the same matmuls, so the time line above says whether the two are told apart at all (this
# lesson shows no breakdown of where the time goes); the memory line is the point. How the per-MLP difference adds up in a whole model depends
# on checkpointing. Without it, every layer keeps its saved tensors alive until its backward runs, so the
# difference is paid once per layer. With it — and every recorded end-to-end run uses it — a layer's tensors exist
# only while that one layer is recomputed and differentiated, so the difference lowers the step's peak once, not
# once per layer (week 5's checkpointing lesson measures what each layer keeps in each mode).
#
# ## Exercises
#
# - **Exercise 5.1 — the LoRA backward** (`exercises/week5/ex5_1_lora_backward.py`): write dx, dA, dB for one
#   projection and check them against autograd with `pytest -m ex5_1`.
# - **Exercise 5.3 — the Q/K/V backward** (`exercises/week5/ex5_3_qkv_backward.py`): dx, dA and dB for three
#   projections sharing x, with dx accumulated in one buffer and B A never formed: `pytest -m ex5_3`.
#
# ## Journal prompt
#
# Write the MLP backward on paper as a list of matmuls with their shapes (N, C, I, r). Which products are cheap
# (involve r), which are expensive, and which buffer would you overwrite at each step? Compare your list with
# `LoRA_MLP.backward` above and with Unsloth's `LoRA_MLP.backward` in `unsloth/kernels/fast_lora.py`.

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
# # Week 3 — Kernels I: RoPE, SwiGLU and RMSNorm in Triton
#
# A Llama layer spends most of its FLOPs in matrix multiplies, but a surprising share of its *time* and *memory*
# in the small elementwise steps between them: rotating queries and keys (RoPE), gating the MLP (SwiGLU),
# normalizing (RMSNorm). Each does a few arithmetic operations per number it reads, so the bytes that cross the
# GPU's memory bus set a floor on its time (how close a kernel gets to that floor is measured below). This lesson counts those bytes for the plain PyTorch versions, reads
# the Triton kernels that move each byte once, checks them on odd shapes on your laptop, and reads a benchmark
# recorded on a real GPU.
#
# **Goals.** By the end you can
#
# 1. count the bytes a chain of PyTorch ops moves, and compare it with the floor (each input read once, each
#    output written once);
# 2. read a Triton kernel: program ids, offsets, masks, load → fp32 math → cast on store;
# 3. derive the backward of RoPE (a rotation by −θ) and of SwiGLU, and say why the SwiGLU backward can reuse its
#    input buffers;
# 4. run a kernel in the Triton interpreter and test it against a reference with sensible tolerances;
# 5. read a bandwidth plot: TB/s at the floor bytes against the copy ceiling.
#
# **Where this lives in Unsloth, and in minilora.** The learning plan's "Triton kernels" phase names these files:
#
# | Unsloth | what it does | minilora |
# |---|---|---|
# | `unsloth/kernels/rope_embedding.py` | RoPE forward/backward for q and k | `minilora/kernels/rope.py` → `rope_fast`, `_rope_kernel` |
# | `unsloth/kernels/swiglu.py` (and `geglu.py`) | gated MLP activation, backward written into the inputs | `minilora/kernels/swiglu.py` → `swiglu_fast`, `geglu_fast` |
# | `unsloth/kernels/rms_layernorm.py` | RMSNorm forward/backward storing 1/rms per row | `minilora/kernels/rmsnorm.py` → `rms_norm_fast` |
# | `unsloth/kernels/utils.py` (block sizes, warps) | launch settings | `minilora/kernels/_triton.py` |
#
# The plan's advice holds here too: focus on the mathematics each kernel implements; the Triton syntax is small.
# The cell below prints the first docstring line of each minilora file.

# %%
import ast
import os
import pathlib
import time

import torch

if not torch.cuda.is_available():
    # The Triton interpreter must be switched on before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


for path in ["minilora/kernels/rope.py", "minilora/kernels/swiglu.py", "minilora/kernels/rmsnorm.py",
             "minilora/kernels/_triton.py", "minilora/ops.py"]:
    doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text())) or ""
    print(f"{path:30s} {doc.splitlines()[0]}")

# %% [markdown]
# ## 1. Motivation: the naive versions, with their bytes counted
#
# Here is the plain PyTorch RoPE that minilora keeps as its reference (and runs on CPU by default):

# %%
import benchmarks.bench_elementwise as bench_elementwise
from benchmarks.harness import Results, latest, load_results, print_table
from minilora.kernels import rmsnorm, rope, swiglu
from minilora.show import show  # a @triton.jit kernel shows the Python function it compiles

show(rope.rotate_half)
show(rope.rope_reference)

# %% [markdown]
# Every PyTorch op reads its inputs from memory and writes its output back: `rotate_half` alone slices, negates and
# concatenates, writing a full copy of `q`. To count exactly, the next cell runs the references forward *and*
# backward on `meta` tensors — tensors with a shape and a dtype but no storage, so Llama-3-8B sizes cost nothing —
# and a `TorchDispatchMode` records every ATen op with the bytes it reads and writes (views such as slices and
# transposes move no data and are skipped). Shapes: RoPE q (8, 32, 2048, 128) and k (8, 8, 2048, 128); SwiGLU
# gate/up (16384, 14336); RMSNorm x (16384, 4096); all bf16.

# %%
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

NO_TRAFFIC = {"unsqueeze", "slice", "detach", "view", "_unsafe_view", "transpose", "t", "expand", "alias",
              "empty_like", "as_strided", "permute", "squeeze", "empty", "ones_like", "zeros_like"}


class ByteCounter(TorchDispatchMode):
    """Adds up the bytes every ATen op reads and writes (tensor arguments in, tensor results out)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name not in NO_TRAFFIC:
            size = lambda ts: sum(t.numel() * t.element_size() for t in tree_leaves(ts) if isinstance(t, torch.Tensor))
            self.ops.append((name, size((args, kwargs)), size(out)))
        return out


def count(fn, inputs, grads):
    with ByteCounter() as counter:
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, grads)
    return counter.ops


meta = dict(device="meta", dtype=torch.bfloat16)
q = torch.empty(8, 32, 2048, 128, **meta, requires_grad=True)
k = torch.empty(8, 8, 2048, 128, **meta, requires_grad=True)
cos = sin = torch.empty(1, 2048, 128, **meta)
g = torch.empty(16384, 14336, **meta, requires_grad=True)
u = torch.empty(16384, 14336, **meta, requires_grad=True)
x = torch.empty(16384, 4096, **meta, requires_grad=True)
w = torch.empty(4096, **meta, requires_grad=True)
GB = 1e9
cases = {
    # name: (counted ops, floor bytes = every tensor the op must touch, read once / written once, fwd + bwd)
    "rope": (count(rope.rope_reference, (q, k, cos, sin), (torch.empty_like(q), torch.empty_like(k))),
             4 * (q.numel() + k.numel()) * 2),
    "swiglu": (count(swiglu.swiglu_reference, (g, u), (torch.empty_like(g),)), 8 * g.numel() * 2),
    "rmsnorm": (count(lambda a, b: rmsnorm.rms_norm_reference(a, b, 1e-6), (x, w), (torch.empty_like(x),)),
                5 * x.numel() * 2),
}
naive_bytes = {}
for name, (ops, floor) in cases.items():
    moved = sum(r + wr for _, r, wr in ops)
    naive_bytes[name] = moved
    print(f"{name:8s} {len(ops):3d} ATen ops fwd+bwd, {moved / GB:6.2f} GB moved; floor {floor / GB:5.2f} GB "
          f"-> {moved / floor:4.1f}x the floor")
print("\nthe RoPE ops, in order (GB read, GB written):")
print(", ".join(f"{n} {r / GB:.2f}/{wr / GB:.2f}" for n, r, wr in cases["rope"][0]))

# %% [markdown]
# The cell above is the whole argument for kernels: the reference RoPE moves several times its floor, mostly
# through temporaries (`cat`, `neg`, products written out only to be read back by an `add`). RMSNorm is worse —
# it upcasts to fp32, so every temporary is twice the size. SwiGLU's reference comes closest to its floor, because
# PyTorch's `silu` has a fused backward and there are only a handful of ops — yet it still writes `silu(g)` out, reads
# it back, and allocates new (tokens × intermediate) tensors for the gradients.
#
# A fused kernel reads each input once into registers, does *all* the arithmetic there in fp32, and writes each
# output once. The floors used throughout (and by the benchmark) are:
#
# * RoPE: forward reads q, k and writes q′, k′; backward reads dq′, dk′ and writes dq, dk → 4 × (|q| + |k|);
# * SwiGLU: forward reads g, u and writes h; backward reads dh, g, u and writes dg, du → 8 × |g|;
# * RMSNorm: forward reads x and writes y; backward reads dy, x and writes dx → 5 × |x|
#   (cos/sin, the weight and one number per row are small next to these and are left out).

# %% [markdown]
# ## 2. The math each kernel implements
#
# **RoPE (rotate-half).** Split a head into halves $x = [x_1, x_2]$ and the tables likewise. Then
# $y_1 = x_1 c - x_2 s$ and $y_2 = x_2 c + x_1 s$: each pair $(x_1^{(i)}, x_2^{(i)})$ is rotated by the angle
# $\theta_i$ of its position. A rotation matrix is orthogonal, so its transpose is its inverse: the backward is the
# rotation by $-\theta$ — same cos, negated sin: $dx_1 = dy_1 c + dy_2 s$, $dx_2 = dy_2 c - dy_1 s$. Nothing has to be
# saved but the tables.
#
# **SwiGLU.** $h = \mathrm{silu}(g)\,u$ with $\mathrm{silu}(g) = g\,\sigma(g)$. Then
# $\partial h/\partial u = \mathrm{silu}(g)$ and $\partial h / \partial g = u\,\sigma(g)\,(1 + g\,(1 - \sigma(g)))$.
# Both need only $g$ and $u$, which autograd keeps anyway. So the backward *recomputes* $\sigma(g)$ (a few
# instructions) instead of storing it (another tokens × intermediate tensor), and once it has read $g$ and $u$ it
# never needs them again — it writes $dg$ over $g$ and $du$ over $u$. For a Llama-3-8B MLP with 16384 tokens, each of
# those tensors is the size printed below. (Exercise 3.2 has you derive $\mathrm{silu}'$ yourself.)
#
# **RMSNorm.** $y = w \cdot \hat{x}$ with $\hat{x} = x\,r$ and $r = 1/\sqrt{\mathrm{mean}(x^2) + \epsilon}$. The
# forward stores just $r$ (one fp32 number per row); the backward rebuilds $\hat{x}$ from $x$ and $r$ and computes
# $dx = r\,(g - \hat{x}\,\mathrm{mean}(g\,\hat{x}))$ with $g = dy \cdot w$, and $dw = \sum_{\text{rows}} dy\,\hat{x}$.

# %%
one_buffer = 16384 * 14336 * 2
print(f"one (16384 x 14336) bf16 tensor: {one_buffer / 2**30:.3f} GiB — the SwiGLU backward writes dg and du into "
      f"two of them, so the backward's peak is {2 * one_buffer / 2**30:.3f} GiB lower. Once, not per layer: the "
      f"layers' backwards run one after another, so only one layer's dg and du would be alive at a time")
print(f"RMSNorm keeps r for the backward: {16384 * 4 / 2**10:.0f} KiB for 16384 rows, instead of x_hat: "
      f"{16384 * 4096 * 2 / 2**20:.0f} MiB")

# %% [markdown]
# ## 3. The kernels
#
# A Triton kernel is a function run by many *programs* at once; `tl.program_id(axis)` tells each one which piece of
# the data it owns. Inside, `tl.arange` builds a block of offsets, `tl.load`/`tl.store` move whole blocks, and
# a `mask` switches off the lanes that fall past the end of the tensor — without it, an odd shape would read or write
# out of bounds. The SwiGLU kernels are the simplest: flat offsets, one block per program.

# %%
show(swiglu._activation_and_slope)
show(swiglu._glu_backward_kernel)

# %% [markdown]
# Note the order in the backward: load `dh`, `g`, `u`; compute; store into `dgate_ptr`/`dup_ptr`, which *are*
# `gate`/`up` when the gradients are written in place. Each element is read before it is overwritten and belongs
# to one program only, so that is safe. The autograd Function around it bumps the version counters of `gate` and
# `up`, so an op that had saved them would meet a version mismatch in its backward (PyTorch's rule for in-place
# writes, not exercised in this lesson) instead of silently reading gradients as values:

# %%
show(swiglu.GLUFunction.backward)

# %% [markdown]
# RoPE needs a little more bookkeeping: q and k arrive as transposed views `(B, heads, T, hd)` of the projection
# outputs, so the kernel takes every stride as an argument. One launch handles q and k: the grid is
# (position blocks, batch, head groups of q followed by head groups of k), and each program loads its cos/sin rows once
# and rotates a (heads × positions × hd/2) tile with them. The `BACKWARD` flag flips the sign of θ.

# %%
show(rope._rope_kernel)
show(rope._rotate_heads)

# %% [markdown]
# RMSNorm's backward has a reduction *across rows* for $dw$. Instead of atomics, a fixed number of programs each
# walk a run of rows, keep a private fp32 partial sum of $dy\,\hat{x}$, and store it; PyTorch adds the few partial rows.

# %%
show(rmsnorm._rms_norm_backward_kernel)

# %% [markdown]
# ## 4. Tested on odd shapes, in the interpreter
#
# On a machine without a GPU, `TRITON_INTERPRET=1` (set in the first cell) runs the very same kernel code in NumPy.
# It is slow — it pays for every operation of every program — but it is exact enough to test against the
# references. Odd shapes are the point: 73 columns or a head size of 42 leave partial blocks that only correct masks
# get right. Two interpreter facts to remember (both on these machines): bf16 *arithmetic* is wrong in the
# interpreter, which is one more reason the kernels load, convert to fp32, compute, and cast only on store; and the
# interpreter's fp32 → bf16 cast truncates where PyTorch rounds to nearest, so bf16 results are compared within one
# bf16 unit in the last place (ulp).

# %%
def ulp_error(actual, truth, dtype):
    """Largest |actual - truth| measured in units in the last place of `dtype` at the truth's magnitude."""
    mantissa = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}[dtype]
    truth = truth.double()
    ulp = torch.exp2(torch.floor(torch.log2(truth.abs().clamp_min(1e-30))) - mantissa)
    slack = 1e-5 * truth.abs().max()  # values that cancel to ~0
    return float(((actual.double() - truth).abs() / (ulp + slack)).max())


torch.manual_seed(0)
started = time.perf_counter()
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    # RoPE: 3 sequences x 73 positions, 4 query heads sharing 2 key heads of size 42, each sequence its own positions
    B, T, hd = 3, 73, 42
    qx = torch.randn(B, T, 4, hd).to(dtype).transpose(1, 2)  # the model's transposed layout
    kx = torch.randn(B, T, 2, hd).to(dtype).transpose(1, 2)
    pos = torch.stack([torch.randperm(T) for _ in range(B)]).double()
    ang = pos[:, :, None] / (10000 ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.cat([ang, ang], -1)
    c, s = ang.cos().to(dtype), ang.sin().to(dtype)
    truth_q, truth_k = rope.rope_reference(qx.double(), kx.double(), c.double(), s.double())
    fast_q, fast_k = rope.rope_fast(qx, kx, c, s)
    rope_err = max(ulp_error(fast_q, truth_q, dtype), ulp_error(fast_k, truth_k, dtype))
    # SwiGLU forward and backward on (3, 423, 73)
    gx = (3 * torch.randn(3, 423, 73)).to(dtype).requires_grad_()
    ux = torch.randn(3, 423, 73).to(dtype).requires_grad_()
    dh = torch.randn(3, 423, 73).to(dtype)
    g64, u64 = gx.detach().double().requires_grad_(), ux.detach().double().requires_grad_()
    swiglu.swiglu_reference(g64, u64).backward(dh.double())
    h = swiglu.swiglu_fast(gx, ux)
    h.backward(dh)
    sw_err = max(ulp_error(h.detach(), swiglu.swiglu_reference(g64, u64).detach(), dtype),
                 ulp_error(gx.grad, g64.grad, dtype), ulp_error(ux.grad, u64.grad, dtype))
    print(f"{str(dtype):15s} worst error in ulps (1.0 = one unit in the last place): "
          f"RoPE {rope_err:4.2f}   SwiGLU out+grads {sw_err:4.2f}")
print(f"interpreter checks took {time.perf_counter() - started:.1f} s")

# %% [markdown]
# For fp16 and bf16 the figures above are at most one ulp: the kernels agree with the float64 truth as closely as
# the output dtype can express. (For fp32 the denominator is dominated by the slack term, 1e-5 of the largest value,
# so its figure is a fraction of that slack.)
# The test files `tests/test_kernels_rope.py`, `tests/test_kernels_swiglu.py` and `tests/test_kernels_rmsnorm.py`
# do the same with hypothesis over many shapes, dtypes, in-place and out-of-place, both cos/sin shapes, plus
# `gradcheck` in float64 on the references and the error messages for bad inputs.

# %% [markdown]
# ## 5. The recorded GPU benchmark
#
# `benchmarks/bench_elementwise.py` runs forward+backward at Llama-3-8B shapes on a GPU, for PyTorch eager,
# `torch.compile`, Liger-Kernel and minilora side by side in one run, each op next to a device copy of its floor
# bytes (the practical bandwidth ceiling). If this machine has a GPU, the next cell measures SwiGLU quickly here; otherwise (and in any case)
# the cell after it loads the recorded results.

# %%
if torch.cuda.is_available():
    gg = torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16)
    uu, dd = torch.randn_like(gg), torch.randn_like(gg)

    def step(f):
        a, b = gg.clone().requires_grad_(), uu.clone().requires_grad_()
        return lambda: f(a * 1, b * 1).backward(dd)

    live = Results("swiglu live", "cuda", log=lambda *_: None)
    live.compare(f"swiglu fwd+bwd 4096x14336 on {torch.cuda.get_device_name()}",
                 {"torch eager": step(swiglu.swiglu_reference), "minilora": step(swiglu.swiglu_fast)},
                 reps=10, nbytes=8 * gg.numel() * 2)
    print_table(live.rows)
else:
    print("no GPU here: showing the recorded results below")

# %%
results_path = latest("benchmarks/results", "elementwise")
recorded = load_results(results_path)
v = recorded["versions"]
print(f"{results_path.name}: {recorded['card']}, torch {v.get('torch')}, triton {v.get('triton')}, Liger-Kernel "
      f"{v.get('liger_kernel', 'not installed')}, {recorded['date']}"
      + (f" — {recorded['provenance']}" if recorded.get("provenance") else ""))
print(recorded["notes"], "\n")
OP_ROW = {"rope": "rope fwd+bwd", "swiglu": "swiglu fwd+bwd", "rmsnorm": "rmsnorm fwd+bwd"}
IMPLS = ("torch eager", "torch.compile", "liger", "minilora")


def row(op, impl):
    return next((r for r in recorded["rows"] if r["name"] == OP_ROW[op] and r["impl"] == impl and r["reps"]), None)


print(f"{'op':8s} {'implementation':14s} {'median ms [min–max]':>28s} {'TB/s':>6s} {'% of copy':>9s} "
      f"{'peak GiB':>9s}")
for op in OP_ROW:
    for impl in IMPLS:
        r = row(op, impl)
        if r:
            span = "range not recorded" if r.get("converted") else f"[{r['min_ms']:.3f}–{r['max_ms']:.3f}]"
            print(f"{op:8s} {impl:14s} {r['median_ms']:8.3f} {span:>19s} {r['tb_s']:6.2f} {r['pct_of_copy']:8.0f}% "
                  f"{r['peak_gib']:9.3f}")

_ = bench_elementwise.plot(str(results_path), show=True)

# %% [markdown]
# ## 6. What the plot says
#
# The cell below turns the recorded rows into the statements this section makes, so the prose never drifts from the
# numbers: each kernel's share of the copy ceiling, its speed relative to Liger-Kernel and `torch.compile`, its
# memory, and how the naive reference's byte count from section 1 predicts the eager slowdown. A comparison is
# called a lead only when the two [min–max] ranges do not overlap; otherwise the two are level within the spread.

# %%
def versus(mine, other, label):
    """'1.23x <label>'s speed (ahead / behind / level within the spread)' from the two rows' medians and ranges."""
    ratio = other["median_ms"] / mine["median_ms"]
    if mine.get("converted") or other.get("converted"):
        where = "ahead" if ratio > 1 else "behind" if ratio < 1 else "level"
        where += " on the medians (no ranges recorded)"
    elif mine["max_ms"] < other["min_ms"]:
        where = "ahead"
    elif mine["min_ms"] > other["max_ms"]:
        where = "behind"
    else:
        where = "level within the spread"
    return f"{ratio:.2f}x {label}'s speed ({where})"


for op in OP_ROW:
    mini, eager = row(op, "minilora"), row(op, "torch eager")
    floor = cases[op][1]
    parts = [f"{op}: minilora at {mini['pct_of_copy']:.0f}% of the copy ceiling"]
    for impl, label in (("liger", "Liger"), ("torch.compile", "torch.compile"), ("torch eager", "eager")):
        other = row(op, impl)
        if other:
            parts.append(versus(mini, other, label))
    liger = row(op, "liger")
    if liger:
        more = "more" if mini["peak_gib"] > liger["peak_gib"] else "less" if mini["peak_gib"] < liger["peak_gib"] \
            else "the same"
        parts.append(f"peak {mini['peak_gib']:.3f} GiB, {more} than Liger's {liger['peak_gib']:.3f} GiB")
    parts.append(f"eager moves {naive_bytes[op] / floor:.1f}x the floor bytes and runs at "
                 f"{eager['pct_of_copy']:.0f}% of the ceiling")
    print("; ".join(parts) + ".")

# %% [markdown]
# How to read it (the numbers are the ones printed above):
#
# * **SwiGLU** is one flat elementwise kernel per direction, so it can run at the copy's speed; because the backward
#   writes into `gate`/`up`, its peak memory is just the output `h` — compare its peak with `torch.compile`'s in the
#   table. That memory, more than the time, is what the kernel buys: one pair of buffers fewer during the MLP's
#   backward.
# * **RoPE**'s gap to eager follows the byte ratio of section 1. Its distance from the ceiling is printed above;
#   this lesson does not measure where it comes from (its tiles are small: hd/2 = 64 numbers per half-row).
# * **RMSNorm**'s forward is a single pass; its backward adds a reduction along each row and the cross-row sum for
#   $dw$ (the table times forward and backward together). Liger-Kernel writes
#   $dx$ into the incoming $dy$ buffer by default, which lowers its peak; minilora does not, because that buffer is
#   not always the norm's to overwrite — after a residual add, the very same gradient tensor also flows down the
#   skip connection (Liger's own documentation turns the option off for Gemma-2 for this kind of reason).
# * Short ops (under a millisecond) are sensitive to what ran just before them; that is why the harness rotates
#   the order of the implementations each round and reports the [min–max] range beside the median.
#
# ## Exercises
#
# * **Exercise 3.1** — write the RoPE forward kernel (one row per program, two halves, a mask) and run it in the
#   interpreter: `pytest -m ex3_1` (file `exercises/week3/ex3_1_rope_kernel.py`).
# * **Exercise 3.2** — derive the SwiGLU backward formula and check it against autograd: `pytest -m ex3_2`
#   (file `exercises/week3/ex3_2_swiglu_backward.py`).
#
# ## Journal prompt
#
# Pick one of the three ops. Write down, from section 1's table, how many bytes its reference moves and which two
# ATen ops cost the most; then explain in your own words which of those bytes the kernel avoids and which it cannot
# avoid. Finally: why is it safe for the SwiGLU backward to overwrite its inputs, and what would break if the
# model used `gate` again after the MLP?

"""Benchmark: cross-entropy, fused linear + cross-entropy and the fast LoRA MLP, side by side in one run.

    PYTHONPATH=. python benchmarks/bench_ce_lora.py --out benchmarks/results      # on a CUDA machine

Rows (forward + backward each, bf16):
- CE over materialized logits 8192 x 128256: torch eager (fp32 upcast), torch.compile, Liger-Kernel, minilora
- linear + CE 8192 x 4096 @ 4096 x 128256: torch eager, torch.compile, Liger-Kernel, minilora (two chunk sizes)
- LoRA MLP at Llama-3-8B shapes (C 4096, I 14336, r 16, 8192 tokens): PEFT-style composition vs minilora LoRA_MLP
For each: median ms (triton.testing.do_bench) and peak memory above what was allocated before the call (GiB).
Writes ce-lora-<card>-<date>.json and .png (atomically). `--small` runs tiny shapes (works through the Triton
interpreter on CPU: a smoke test of the script, timings meaningless).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from minilora.kernels import cross_entropy as ce_mod  # noqa: E402
from minilora.kernels.cross_entropy import cross_entropy_fast  # noqa: E402
from minilora.kernels.fast_lora import apply_lora_mlp  # noqa: E402
from minilora.kernels.fused_linear_ce import fused_linear_cross_entropy_fast  # noqa: E402
from minilora.lora import LoraLinear  # noqa: E402

GiB = 2**30


def bench_ms(fn, device):
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=10, rep=100, return_mode="median")
    fn()
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def peak_gib(fn, device):
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / GiB


def measure(rows, group, name, fn, device, **extra):
    try:
        fn()  # warm-up / compile
        ms = bench_ms(fn, device)
        mem = peak_gib(fn, device)
        rows.append(dict(group=group, name=name, ms=round(ms, 4), peak_extra_gib=round(mem, 4), **extra))
        print(f"{group:10s} {name:34s} {ms:9.3f} ms {mem:7.3f} GiB", flush=True)
    except Exception as err:  # one failing baseline must not lose the others
        rows.append(dict(group=group, name=name, error=f"{type(err).__name__}: {err}"[:300]))
        print(f"{group:10s} {name:34s} FAILED {type(err).__name__}: {str(err)[:200]}", flush=True)
    if device == "cuda":
        torch.cuda.empty_cache()


def liger():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss
        return LigerCrossEntropyLoss(), LigerFusedLinearCrossEntropyLoss()
    except Exception as err:  # noqa: BLE001 - not installed (CPU smoke runs)
        print(f"Liger-Kernel unavailable: {err}")
        return None, None


def bench_ce(rows, N, V, device, liger_ce, sweep):
    dt = torch.bfloat16
    logits = torch.randn(N, V, device=device, dtype=dt).requires_grad_()
    labels = torch.randint(0, V, (N,), device=device)

    def eager():
        F.cross_entropy(logits.float(), labels).backward()
        logits.grad = None

    compiled_ce = torch.compile(lambda z, y: F.cross_entropy(z.float(), y))

    def compiled():
        compiled_ce(logits, labels).backward()
        logits.grad = None

    def minilora():
        # the kernel writes the gradient into `logits` itself (so later iterations see gradients as input: the
        # values don't matter for timing, and nothing is allocated for them)
        cross_entropy_fast(logits, labels).backward()
        logits.grad = None

    measure(rows, "CE", "torch eager (fp32 upcast)", eager, device)
    if device == "cuda":
        measure(rows, "CE", "torch.compile", compiled, device)
    if liger_ce is not None:
        def lig():
            liger_ce(logits, labels).backward()
            logits.grad = None
        measure(rows, "CE", "Liger-Kernel", lig, device)
    if sweep:  # a few launch shapes for the two kernels; the default is the one the library ships
        default = (ce_mod.FORWARD_BLOCK, ce_mod.BACKWARD_BLOCK, ce_mod.NUM_WARPS)
        for fb, bb, nw in sweep:
            ce_mod.FORWARD_BLOCK, ce_mod.BACKWARD_BLOCK, ce_mod.NUM_WARPS = fb, bb, nw
            measure(rows, "CE-sweep", f"minilora fwd{fb} bwd{bb} w{nw}", minilora, device, config=[fb, bb, nw])
        ce_mod.FORWARD_BLOCK, ce_mod.BACKWARD_BLOCK, ce_mod.NUM_WARPS = default
    measure(rows, "CE", "minilora", minilora, device)
    del logits


def bench_linear_ce(rows, N, H, V, device, liger_flce, chunks):
    dt = torch.bfloat16
    hidden = torch.randn(N, H, device=device, dtype=dt).requires_grad_()
    weight = (torch.randn(V, H, device=device, dtype=dt) * 0.02).requires_grad_()
    labels = torch.randint(0, V, (N,), device=device)

    def clear():
        hidden.grad = None
        weight.grad = None

    def eager():
        F.cross_entropy((hidden @ weight.T).float(), labels).backward()
        clear()

    lce = torch.compile(lambda h, w, y: F.cross_entropy((h @ w.T).float(), y))

    def compiled():
        lce(hidden, weight, labels).backward()
        clear()

    def mine_default():
        fused_linear_cross_entropy_fast(hidden, weight, labels).backward()
        clear()

    measure(rows, "linear+CE", "torch eager", eager, device)
    if device == "cuda":
        measure(rows, "linear+CE", "torch.compile", compiled, device)
    if liger_flce is not None:
        def lig():
            liger_flce(weight, hidden, labels).backward()
            clear()
        measure(rows, "linear+CE", "Liger-Kernel", lig, device)
    for chunk in chunks:
        def mine(chunk=chunk):
            fused_linear_cross_entropy_fast(hidden, weight, labels, chunk_size=chunk).backward()
            clear()
        label = "minilora (default chunk)" if chunk is None else f"minilora chunk {chunk}"
        measure(rows, "linear+CE", label, mine, device, chunk_size=chunk)
    if device == "cuda":  # variants of the per-chunk cross-entropy at the default chunk (not in the plot)
        from minilora.kernels import fused_linear_ce as flce_mod
        default = (ce_mod.ROW_BLOCK, ce_mod.ROW_NUM_WARPS)
        for block, warps in [(32768, 32), (4096, 8)]:
            ce_mod.ROW_BLOCK, ce_mod.ROW_NUM_WARPS = block, warps
            measure(rows, "LCE-sweep", f"minilora one launch block{block} w{warps}", mine_default, device)
        ce_mod.ROW_BLOCK, ce_mod.ROW_NUM_WARPS = default
        flce_mod.ONE_LAUNCH_CE = False
        measure(rows, "LCE-sweep", "minilora two kernels (lse, then grad)", mine_default, device)
        flce_mod.ONE_LAUNCH_CE = True
    # LoRA training freezes lm_head: no (V, H) weight gradient at all, one matmul fewer per chunk
    weight.requires_grad_(False)
    measure(rows, "frozen lm_head", "torch eager", eager, device)
    for chunk in dict.fromkeys(chunks[:1] + chunks[-1:]):  # the default and the fastest chunk size
        def mine(chunk=chunk):
            fused_linear_cross_entropy_fast(hidden, weight, labels, chunk_size=chunk).backward()
            clear()
        label = "minilora (default chunk)" if chunk is None else f"minilora chunk {chunk}"
        measure(rows, "frozen lm_head", label, mine, device, chunk_size=chunk)
    del hidden, weight


def bench_lora_mlp(rows, N, C, I, r, device):
    dt = torch.bfloat16
    torch.manual_seed(0)

    def make(d_in, d_out):
        layer = LoraLinear(nn.Linear(d_in, d_out, bias=False, device=device, dtype=dt), r=r, lora_alpha=2 * r)
        nn.init.normal_(layer.lora_B.weight, std=0.01)
        layer.base_layer.requires_grad_(False)
        return layer

    gate, up, down = make(C, I), make(C, I), make(I, C)
    x = (torch.randn(N, C, device=device, dtype=dt) * 0.5).requires_grad_()
    dy = torch.randn(N, C, device=device, dtype=dt)
    params = [p for m in (gate, up, down) for p in (m.lora_A.weight, m.lora_B.weight)]

    def clear():
        x.grad = None
        for p in params:
            p.grad = None

    def peft_style():  # what PEFT does: each LoraLinear on its own, autograd saves every intermediate
        down(F.silu(gate(x)) * up(x)).backward(dy)
        clear()

    def fast():
        apply_lora_mlp(x, gate, up, down).backward(dy)
        clear()

    measure(rows, "LoRA MLP", "PEFT-style composition (eager)", peft_style, device)
    measure(rows, "LoRA MLP", "minilora LoRA_MLP", fast, device)


def environment(device):
    import triton
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0])
    if device == "cuda":
        env["card"] = torch.cuda.get_device_name()
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version
        env["liger_kernel"] = version("liger-kernel")
    except Exception:  # noqa: BLE001
        pass
    return env


def write_atomic(path: pathlib.Path, data: bytes):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plot(result, png: pathlib.Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [g for g in ["CE", "linear+CE", "frozen lm_head", "LoRA MLP"] if g in result["shapes"]]
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 7.5), squeeze=False)
    for col, group in enumerate(groups):
        rows = [r for r in result["rows"] if r["group"] == group and "ms" in r]
        names = [r["name"] for r in rows]
        colors = ["tab:orange" if n.startswith("minilora") else "tab:gray" for n in names]
        for row_i, (key, unit) in enumerate([("ms", "ms (lower is better)"), ("peak_extra_gib", "peak extra GiB")]):
            ax = axes[row_i, col]
            ax.barh(names, [r[key] for r in rows], color=colors)
            ax.set_xlabel(unit)
            ax.invert_yaxis()
            if row_i == 0:
                ax.set_title(f"{group}: {result['shapes'][group]}", fontsize=9)
            for y, r in enumerate(rows):
                ax.text(r[key], y, f" {r[key]:.2f}", va="center", fontsize=8)
    env = result["environment"]
    fig.suptitle(f"fwd+bwd, bf16 — {env.get('card', 'cpu')}, torch {env['torch']}, triton {env['triton']}, "
                 f"{env['date'][:10]}", fontsize=11)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=png.parent, prefix=png.name, suffix=".tmp.png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a smoke test; runs on CPU too)")
    ap.add_argument("--only", default="ce,lce,lora", help="comma list of: ce, lce, lora")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.small:
        ap.error("full-size shapes need a CUDA GPU; use --small for a CPU smoke test")
    shapes = dict(N=64, V=3000, H=32, C=32, I=48, r=4) if args.small else \
        dict(N=8192, V=128_256, H=4096, C=4096, I=14_336, r=16)
    N, V = shapes["N"], shapes["V"]
    liger_ce, liger_flce = liger() if device == "cuda" else (None, None)
    rows = []
    only = set(args.only.split(","))
    if "ce" in only:
        sweep = [] if args.small else [(4096, 4096, 8), (8192, 4096, 16), (2048, 2048, 8), (4096, 8192, 16)]
        bench_ce(rows, N, V, device, liger_ce, sweep)
    if "lce" in only:
        chunks = [None] if args.small else [None, 512, 1024]
        bench_linear_ce(rows, N, shapes["H"], V, device, liger_flce, chunks)
    if "lora" in only:
        bench_lora_mlp(rows, N, shapes["C"], shapes["I"], shapes["r"], device)
    result = dict(environment=environment(device),
                  shapes={"CE": f"logits {N}x{V} bf16", "linear+CE": f"{N}x{shapes['H']} @ {shapes['H']}x{V} bf16",
                          "frozen lm_head": f"linear+CE, lm_head frozen (LoRA)",
                          "LoRA MLP": f"{N} tokens, C {shapes['C']}, I {shapes['I']}, r {shapes['r']}, bf16"},
                  defaults=dict(ce_forward_block=ce_mod.FORWARD_BLOCK, ce_backward_block=ce_mod.BACKWARD_BLOCK,
                                ce_num_warps=ce_mod.NUM_WARPS),
                  rows=rows)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = result["environment"].get("card", "cpu").replace("NVIDIA ", "").replace(" ", "-").lower()
    stem = f"ce-lora-{card}-{result['environment']['date'][:10]}" + ("-small" if args.small else "")
    write_atomic(out / f"{stem}.json", json.dumps(result, indent=1).encode())
    plot(result, out / f"{stem}.png")
    print("wrote", out / f"{stem}.json", out / f"{stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

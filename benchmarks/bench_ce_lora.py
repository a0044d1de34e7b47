"""Cross-entropy, fused linear + cross-entropy and the fast LoRA MLP, each against its baselines in one call,
timed by benchmarks/harness.py (warm-up, rotated rounds, the same number of calls each, median [min–max]).

Comparisons (forward + backward each, bf16):
- CE over materialized logits 8192 x 128256: torch eager (fp32 upcast), torch.compile, Liger-Kernel, minilora;
  with the copy ceiling of the floor bytes (read the logits once, write their gradient once)
- linear + CE 8192 x 4096 @ 4096 x 128256, trainable head: torch eager, torch.compile, Liger-Kernel, minilora at its
  default chunk and at fixed chunks (--chunks)
- the same with a frozen head (the LoRA case: no weight gradient): torch eager, minilora default and fixed chunks
- LoRA MLP at Llama-3-8B shapes (C 4096, I 14336, r 16, 8192 tokens): PEFT-style composition vs minilora LoRA_MLP
Peak GiB = allocated during one call above what was allocated before it.

    python -m benchmarks.bench_ce_lora --out DIR            # GPU: DIR/ce-lora.json + .png
    python -m benchmarks.bench_ce_lora --smoke --out DIR    # tiny shapes on a CPU (Triton interpreter): code path
    python -m benchmarks.bench_ce_lora --plot FILE.json     # the PNG of a recorded file
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import harness

GROUPS = {"ce": "CE", "lce": "linear+CE", "frozen": "frozen lm_head", "lora": "LoRA MLP"}


def liger_losses():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss
        return LigerCrossEntropyLoss(), LigerFusedLinearCrossEntropyLoss()
    except ImportError as err:
        print(f"Liger-Kernel not importable ({err}); its rows are left out")
        return None, None


def bench_ce(res, args, N, V, device, liger_ce):
    from minilora.kernels.cross_entropy import cross_entropy_fast
    logits = torch.randn(N, V, device=device, dtype=args.dtype).requires_grad_()
    labels = torch.randint(0, V, (N,), device=device)

    def run(f):
        def call():
            f(logits, labels).backward()
            logits.grad = None
        return call
    impls = {"torch eager (fp32 upcast)": run(lambda z, y: F.cross_entropy(z.float(), y))}
    if args.compile:
        impls["torch.compile"] = run(torch.compile(lambda z, y: F.cross_entropy(z.float(), y)))
    if liger_ce is not None:
        impls["Liger-Kernel"] = run(liger_ce)
    # the kernel writes the gradient into `logits` itself: later calls see gradients as input, which changes
    # nothing in the work done and allocates nothing for them
    impls["minilora"] = run(cross_entropy_fast)
    res.compare(GROUPS["ce"], impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                nbytes=2 * logits.numel() * logits.element_size(),
                extras={i: {"shape": f"logits {N}x{V}"} for i in impls})


def bench_linear_ce(res, args, N, H, V, device, liger_flce, frozen: bool):
    from minilora.kernels.fused_linear_ce import default_chunk_size, fused_linear_cross_entropy_fast
    hidden = torch.randn(N, H, device=device, dtype=args.dtype).requires_grad_()
    weight = (torch.randn(V, H, device=device, dtype=args.dtype) * 0.02).requires_grad_(not frozen)
    labels = torch.randint(0, V, (N,), device=device)

    def run(f):
        def call():
            f(hidden, weight, labels).backward()
            hidden.grad = weight.grad = None
        return call
    eager = lambda h, w, y: F.cross_entropy((h @ w.T).float(), y)
    impls = {"torch eager": run(eager)}
    if args.compile and not frozen:
        impls["torch.compile"] = run(torch.compile(eager))
    if liger_flce is not None and not frozen:
        impls["Liger-Kernel"] = run(lambda h, w, y: liger_flce(w, h, y))
    default = default_chunk_size(N, V, hidden.element_size(), weight_trainable=not frozen)
    impls[f"minilora (default chunk {default})"] = run(fused_linear_cross_entropy_fast)
    for chunk in args.chunk_list:
        if chunk != default:
            impls[f"minilora chunk {chunk}"] = run(
                lambda h, w, y, c=chunk: fused_linear_cross_entropy_fast(h, w, y, chunk_size=c))
    flops = (2 if frozen else 3) * 2 * N * H * V
    group = GROUPS["frozen" if frozen else "lce"]
    res.compare(group, impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup, flops=flops,
                extras={i: {"shape": f"{N}x{H} @ {H}x{V}" + (", head frozen" if frozen else "")} for i in impls})


def bench_lora_mlp(res, args, N, C, I, r, device):
    from minilora import ops
    from minilora.lora import LoraLinear, lora_weights
    torch.manual_seed(0)

    def make(d_in, d_out):
        layer = LoraLinear(nn.Linear(d_in, d_out, bias=False, device=device, dtype=args.dtype), r=r,
                           lora_alpha=2 * r)
        nn.init.normal_(layer.lora_B.weight, std=0.01)
        layer.base_layer.requires_grad_(False)
        return layer

    gate, up, down = make(C, I), make(C, I), make(I, C)
    x = (torch.randn(N, C, device=device, dtype=args.dtype) * 0.5).requires_grad_()
    dy = torch.randn(N, C, device=device, dtype=args.dtype)
    params = [p for m in (gate, up, down) for p in (m.lora_A.weight, m.lora_B.weight)]

    def clear():
        x.grad = None
        for p in params:
            p.grad = None

    def peft_style():  # what PEFT does: each LoraLinear on its own, autograd saves every intermediate
        down(F.silu(gate(x)) * up(x)).backward(dy)
        clear()

    def fast():  # the weights are read per call, as the model's forward does
        with ops.use_kernels("triton"):
            ops.lora_mlp(x, lora_weights(gate), lora_weights(up), lora_weights(down)).backward(dy)
        clear()
    shape = f"{N} tokens, C {C}, I {I}, r {r}"
    impls = {"PEFT-style composition (eager)": peft_style, "minilora LoRA_MLP": fast}
    res.compare(GROUPS["lora"], impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                extras={i: {"shape": shape} for i in impls})


def plot(json_path: str, png_path: str | None = None, show: bool = False):
    """One column per comparison: median ms with [min–max] whiskers (top), peak GiB (bottom)."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = harness.load_results(json_path)
    groups = [g for g in GROUPS.values() if any(r["name"] == g for r in data["rows"])]
    fig, axes = plt.subplots(2, len(groups), figsize=(5 * len(groups), 7.5), squeeze=False)
    for col, group in enumerate(groups):
        rows = [r for r in data["rows"] if r["name"] == group and r["reps"] and r["impl"] != harness.COPY_IMPL]
        names = [r["impl"] for r in rows]
        colors = ["tab:orange" if n.startswith("minilora") else "tab:gray" for n in names]
        ax = axes[0, col]
        ax.barh(names, [r["median_ms"] for r in rows], color=colors,
                xerr=[[r["median_ms"] - r["min_ms"] for r in rows], [r["max_ms"] - r["median_ms"] for r in rows]])
        ax.set_xlabel("ms, median [min–max] (lower is better)")
        ax.set_title(f"{group}: {rows[0].get('shape', '') if rows else ''}", fontsize=9)
        ax_m = axes[1, col]
        ax_m.barh(names, [r["peak_gib"] or 0.0 for r in rows], color=colors)
        ax_m.set_xlabel("peak GiB above the inputs")
        for a in (ax, ax_m):
            a.invert_yaxis()
    v = data["versions"]
    fig.suptitle(f"fwd+bwd — {data['card']}, torch {v.get('torch')}, triton {v.get('triton')}, {data['date'][:10]}",
                 fontsize=11)
    fig.tight_layout()
    if png_path:
        fig.savefig(png_path, dpi=110)
    if not show:
        plt.close(fig)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="ce,lce,frozen,lora", help="comma list of: ce, lce, frozen, lora")
    ap.add_argument("--chunks", default="1024,2048", help="fixed chunk sizes of the fused loss besides its default")
    harness.add_run_args(ap, reps=5, warmup=2, plot=True)
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile baselines")
    args = ap.parse_args(argv)
    if args.plot:
        return harness.draw_recorded(args.plot, plot)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("full-size shapes need a CUDA GPU; --smoke runs tiny shapes on the CPU")
    device = "cpu" if args.smoke else "cuda"
    args.compile = not (args.skip_compile or args.smoke)
    args.dtype = torch.float32 if args.smoke else torch.bfloat16
    args.chunk_list = [16] if args.smoke else [int(c) for c in args.chunks.split(",") if c]
    if args.smoke:
        args.reps, args.warmup = 1, 1
    s = dict(N=64, V=3000, H=32, C=32, I=48, r=4) if args.smoke else dict(N=8192, V=128_256, H=4096, C=4096,
                                                                          I=14_336, r=16)
    liger_ce, liger_flce = (None, None) if args.smoke else liger_losses()
    res = harness.Results("ce-lora", device, notes=(
        f"fwd+bwd, {'tiny shapes (smoke), fp32' if args.smoke else 'bf16'}; warm-up {args.warmup}, {args.rounds} "
        f"rotated rounds x {args.reps} calls per implementation. CE rows with the copy ceiling of their floor bytes; "
        "linear+CE rows with model TFLOP/s (3 matmuls with a trainable head, 2 frozen)."))
    res.autosave(args.out, harness.result_stem("ce-lora", device, args.smoke))
    only = set(args.only.split(","))
    if "ce" in only:
        bench_ce(res, args, s["N"], s["V"], device, liger_ce)
    if "lce" in only:
        bench_linear_ce(res, args, s["N"], s["H"], s["V"], device, liger_flce, frozen=False)
    if "frozen" in only:
        bench_linear_ce(res, args, s["N"], s["H"], s["V"], device, None, frozen=True)
    if "lora" in only:
        bench_lora_mlp(res, args, s["N"], s["C"], s["I"], s["r"], device)
    harness.finish(res, args.out, harness.result_stem("ce-lora", device, args.smoke), plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

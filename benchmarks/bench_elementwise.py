"""RoPE, SwiGLU and RMSNorm forward+backward at Llama-3-8B shapes: minilora's Triton kernels beside PyTorch eager,
torch.compile and Liger-Kernel, plus a 1 GiB device copy as the bandwidth ceiling — all in one run on one card.

    python benchmarks/bench_elementwise.py --out DIR            # on a CUDA machine: DIR/elementwise.json
    python benchmarks/bench_elementwise.py --plot FILE.json     # anywhere: FILE.png from recorded results

Timing: "ms" = median over 5 trials of 25 back-to-back calls (the CPU queues launches ahead of the GPU, as in a
training step); "ms_do_bench" = triton.testing.do_bench's median (the anchors' method: it clears the L2 cache
before every call, so for sub-millisecond ops it also counts the CPU time of issuing the call — noisy for ops with
several launches; kept for comparison).
"TB/s" = floor bytes / median time, floor = each tensor the op must touch read once and written once:
  RoPE     fwd reads q, k and writes q', k'; bwd reads dq', dk' and writes dq, dk   -> 4 (|q| + |k|) bytes
  SwiGLU   fwd reads g, u, writes h;  bwd reads dh, g, u, writes dg, du           -> 8 n bytes
  RMSNorm  fwd reads x, writes y;     bwd reads dy, x, writes dx                  -> 5 n bytes
(cos/sin, the weight and per-row statistics are small and left out, as in the anchors.)
"Peak extra GiB" = peak allocated during one forward+backward minus what was allocated before it.
Optional sweeps of the kernels' launch settings (--sweep) pick the fastest setting and report all of them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _peak_extra_gib(fn) -> float:
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def _queued_ms(fn, iters=25, trials=5) -> float:
    """Median over trials of (time for `iters` back-to-back calls) / iters. The CPU queues launches ahead of the GPU,
    as in a training step, so Python/launch overhead is hidden whenever the GPU work takes longer than issuing it."""
    import statistics

    import torch
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def _bench(fn, rep=200) -> float:
    import torch
    from triton.testing import do_bench
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def _best(rows, op):
    """The fastest swept setting of one op, as {name: int}, or None when every setting failed."""
    swept = [r for r in rows if r["op"] == op and r["impl"] == "sweep" and "ms" in r]
    if not swept:
        return None
    best = min(swept, key=lambda r: r["ms"])
    return {kv.split("=")[0]: int(kv.split("=")[1]) for kv in best["note"].split()}


def run(out_dir: str, sweep: bool, skip_compile: bool) -> dict:
    import torch
    import triton

    from minilora.kernels import rmsnorm, rope, swiglu

    torch.manual_seed(0)
    dev = "cuda"
    bf16 = torch.bfloat16
    rows = []
    meta = {"copy_ceiling_tb_s": None}

    def save() -> dict:
        """Write what has been measured so far (called after every op, so a cut-off run still leaves results)."""
        result = {
            "what": "fwd+bwd at Llama-3-8B shapes, bf16: rope b8 s2048 h32/8 d128; swiglu 16384x14336; "
                    "rmsnorm 16384x4096",
            "card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "liger_kernel": liger_version,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "copy_ceiling_tb_s": meta["copy_ceiling_tb_s"], "rows": rows,
        }
        os.makedirs(out_dir, exist_ok=True)
        _write_json(os.path.join(out_dir, "elementwise.json"), result)
        return result

    def record(op, impl, ms, nbytes, mem=None, note="", ms_do_bench=None):
        rows.append({"op": op, "impl": impl, "ms": ms, "tb_s": nbytes / ms / 1e9, "peak_extra_gib": mem,
                     "ms_do_bench": ms_do_bench, "note": note})
        print(f"{op:8s} {impl:18s} {ms:7.3f} ms {nbytes / ms / 1e9:5.2f} TB/s "
              f"{'' if ms_do_bench is None else f'(do_bench {ms_do_bench:7.3f} ms)'} "
              f"{'' if mem is None else f'{mem:6.3f} GiB'} {note}", flush=True)

    def time_and_mem(op, impl, fn, nbytes, note=""):
        try:
            if impl == "sweep":
                record(op, impl, _queued_ms(fn, iters=10, trials=3), nbytes, note=note)
            else:
                ms = _queued_ms(fn)
                record(op, impl, ms, nbytes, _peak_extra_gib(fn), note, ms_do_bench=_bench(fn))
        except Exception as err:  # one broken baseline must not lose the rest of the run
            print(f"{op} {impl} failed: {type(err).__name__}: {err}", flush=True)
            rows.append({"op": op, "impl": impl, "error": f"{type(err).__name__}: {err}"[:300]})

    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        import liger_kernel
        try:
            import importlib.metadata
            liger_version = importlib.metadata.version("liger-kernel")
        except Exception:
            liger_version = getattr(liger_kernel, "__version__", "installed")
    except ImportError as err:
        print(f"Liger-Kernel not importable ({err}); its rows are skipped", flush=True)
        LigerRMSNormFunction = LigerRopeFunction = LigerSiLUMulFunction = None
        liger_version = None

    # 0. Ceiling: copy 1 GiB of bf16 on the device (read 1 GiB + write 1 GiB).
    x = torch.empty(2**29, dtype=bf16, device=dev).normal_()
    y = torch.empty_like(x)
    record("copy", "torch", _queued_ms(lambda: y.copy_(x)), 2 * x.numel() * 2, note="1 GiB device copy (ceiling)",
           ms_do_bench=_bench(lambda: y.copy_(x)))
    meta["copy_ceiling_tb_s"] = rows[-1]["tb_s"]
    del x, y

    def compiled(fn):
        return None if skip_compile else torch.compile(fn)

    # 1. SwiGLU: gate, up (16384, 14336) bf16.
    n_tok, inter = 8 * 2048, 14336
    g = torch.randn(n_tok, inter, device=dev, dtype=bf16, requires_grad=True)
    u = torch.randn(n_tok, inter, device=dev, dtype=bf16, requires_grad=True)
    dh = torch.randn(n_tok, inter, device=dev, dtype=bf16)
    nb = 8 * g.numel() * 2

    def fwd_bwd(f):
        def step():
            f(g, u).backward(dh)
            g.grad = u.grad = None
        return step

    sw_compiled = compiled(swiglu.swiglu_reference)
    time_and_mem("swiglu", "torch eager", fwd_bwd(swiglu.swiglu_reference), nb)
    if sw_compiled is not None:
        time_and_mem("swiglu", "torch.compile", fwd_bwd(sw_compiled), nb)
    if LigerSiLUMulFunction is not None:
        time_and_mem("swiglu", "liger", fwd_bwd(LigerSiLUMulFunction.apply), nb)
    mini = fwd_bwd(lambda a, b: swiglu.swiglu_fast(a, b, inplace_backward=True))
    if sweep:
        for block in (1024, 2048, 4096):
            for warps in (4, 8):
                swiglu.TUNING.update(block=block, num_warps=warps)
                time_and_mem("swiglu", "sweep", mini, nb, note=f"block={block} num_warps={warps}")
        best = _best(rows, "swiglu")
        if best:
            swiglu.TUNING.update(block=best["block"], num_warps=best["num_warps"])
    time_and_mem("swiglu", "minilora", mini, nb, note=f"tuning {swiglu.TUNING}")
    swiglu.TUNING.update(block=None, num_warps=None)
    time_and_mem("swiglu", "minilora default", mini, nb, note="default launch heuristic")
    time_and_mem("swiglu", "minilora copy-bwd", fwd_bwd(lambda a, b: swiglu.swiglu_fast(a, b, inplace_backward=False)),
                 nb, note="backward allocates dgate/dup instead of reusing gate/up")
    del g, u, dh
    save()

    # 2. RoPE: q (8, 32, 2048, 128), k (8, 8, 2048, 128) bf16; one cos/sin table (1, T, hd).
    b, s, nh, nkv, hd = 8, 2048, 32, 8, 128
    q = torch.randn(b, nh, s, hd, device=dev, dtype=bf16, requires_grad=True)
    k = torch.randn(b, nkv, s, hd, device=dev, dtype=bf16, requires_grad=True)
    inv = 1.0 / (500000 ** (torch.arange(0, hd, 2, device=dev).float() / hd))
    ang = torch.outer(torch.arange(s, device=dev).float(), inv)
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().to(bf16)[None], ang.sin().to(bf16)[None]
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    nb = 4 * (q.numel() + k.numel()) * 2

    def rope_step(f):
        def step():
            a, c = f(q, k, cos, sin)
            torch.autograd.backward([a, c], [dq, dk])
            q.grad = k.grad = None
        return step

    rope_compiled = compiled(rope.rope_reference)
    time_and_mem("rope", "torch eager", rope_step(rope.rope_reference), nb)
    if rope_compiled is not None:
        time_and_mem("rope", "torch.compile", rope_step(rope_compiled), nb)
    if LigerRopeFunction is not None:
        time_and_mem("rope", "liger", rope_step(LigerRopeFunction.apply), nb)
    mini = rope_step(rope.rope_fast)
    if sweep:
        for block_h in (1, 2, 4, 8):
            for block_t in (8, 16, 32):
                for warps in (4, 8):
                    rope.TUNING.update(block_h=block_h, block_t=block_t, num_warps=warps)
                    time_and_mem("rope", "sweep", mini, nb, note=f"block_h={block_h} block_t={block_t} num_warps={warps}")
        best = _best(rows, "rope")
        if best:
            rope.TUNING.update(best)
    time_and_mem("rope", "minilora", mini, nb, note=f"tuning {rope.TUNING}")
    rope.TUNING.update(block_h=None, block_t=None, num_warps=None)
    time_and_mem("rope", "minilora default", mini, nb, note="default launch heuristic")
    del q, k, dq, dk
    save()

    # 3. RMSNorm: x (16384, 4096) bf16, weight trainable, eps 1e-6.
    x = torch.randn(n_tok, 4096, device=dev, dtype=bf16, requires_grad=True)
    w = torch.ones(4096, device=dev, dtype=bf16, requires_grad=True)
    dy = torch.randn_like(x)
    nb = 5 * x.numel() * 2

    def rms_step(f):
        def step():
            f(x, w, 1e-6).backward(dy)
            x.grad = w.grad = None
        return step

    rms_compiled = compiled(rmsnorm.rms_norm_reference)
    time_and_mem("rmsnorm", "torch eager", rms_step(rmsnorm.rms_norm_reference), nb)
    if rms_compiled is not None:
        time_and_mem("rmsnorm", "torch.compile", rms_step(rms_compiled), nb)
    if LigerRMSNormFunction is not None:
        time_and_mem("rmsnorm", "liger", rms_step(LigerRMSNormFunction.apply), nb)
    mini = rms_step(rmsnorm.rms_norm_fast)
    if sweep:
        for rows_ in (1, 2, 4):
            for pps in (1, 2, 4):
                for warps in (4, 8, 16):
                    rmsnorm.TUNING.update(rows=rows_, programs_per_sm=pps, num_warps=warps)
                    time_and_mem("rmsnorm", "sweep", mini, nb,
                                 note=f"rows={rows_} programs_per_sm={pps} num_warps={warps}")
        best = _best(rows, "rmsnorm")
        if best:
            rmsnorm.TUNING.update(best)
    time_and_mem("rmsnorm", "minilora", mini, nb, note=f"tuning {rmsnorm.TUNING}")
    rmsnorm.TUNING.update(rows=None, programs_per_sm=4, num_warps=None)
    time_and_mem("rmsnorm", "minilora default", mini, nb, note="default launch heuristic")
    with torch.no_grad():
        time_and_mem("rmsnorm", "minilora fwd only", lambda: rmsnorm.rms_norm_fast(x, w, 1e-6), 2 * x.numel() * 2,
                     note="forward alone (floor: read x, write y)")

    return save()


def _write_json(path: str, obj) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# (label in the plot, impl name in the JSON). minilora is shown with the launch settings it ships with.
IMPLS = (("torch eager", "torch eager"), ("torch.compile", "torch.compile"), ("Liger-Kernel", "liger"),
         ("minilora", "minilora default"))
OPS = ("rope", "swiglu", "rmsnorm")


def find_row(res: dict, op: str, impl: str):
    hit = [r for r in res["rows"] if r["op"] == op and r["impl"] == impl and "ms" in r]
    return hit[0] if hit else None


def plot(json_path: str, png_path: str | None = None, show: bool = False):
    """Left: TB/s at the floor bytes (bars: back-to-back timing; dots: do_bench), with the copy ceiling and 85% of
    it. Right: peak extra memory of one forward+backward."""
    import matplotlib.pyplot as plt
    with open(json_path) as f:
        res = json.load(f)
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.2
    for i, (label, impl) in enumerate(IMPLS):
        xs = [j + (i - 1.5) * width for j in range(len(OPS))]
        found = [find_row(res, op, impl) for op in OPS]
        tbs = [r["tb_s"] if r else 0.0 for r in found]
        bars = ax.bar(xs, tbs, width, label=label)
        for bar, v in zip(bars, tbs):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.04, f"{v:.2f}", ha="center", fontsize=7)
        dots = [(x, r["tb_s"] * r["ms"] / r["ms_do_bench"]) for x, r in zip(xs, found) if r and r.get("ms_do_bench")]
        if dots:
            ax.plot(*zip(*dots), "k.", ms=4, label="do_bench" if i == 0 else None)
        mem = [r["peak_extra_gib"] if r and r["peak_extra_gib"] is not None else 0.0 for r in found]
        ax_mem.bar(xs, mem, width, label=label)
    ceiling = res["copy_ceiling_tb_s"]
    ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"1 GiB copy {ceiling:.2f} TB/s")
    ax.set_ylim(0, ceiling * 1.45)
    ax.axhline(0.85 * ceiling, color="gray", ls=":", lw=1, label="85% of copy")
    ax.set_xticks(range(len(OPS)), OPS)
    ax.set_ylabel("TB/s at the floor bytes (fwd+bwd)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax_mem.set_xticks(range(len(OPS)), OPS)
    ax_mem.set_ylabel("peak extra GiB (fwd+bwd)")
    fig.suptitle(f"{res['card']}, torch {res['torch']}, triton {res['triton']}, {res['date']}", fontsize=9)
    fig.tight_layout()
    if png_path:
        fig.savefig(png_path, dpi=120)
    if show:
        plt.show()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for elementwise.json (CUDA run)")
    ap.add_argument("--sweep", action="store_true", help="also sweep the kernels' launch settings")
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile baselines")
    ap.add_argument("--plot", metavar="JSON", help="only draw the PNG for a recorded JSON file")
    args = ap.parse_args(argv)
    if args.plot:
        png = os.path.splitext(args.plot)[0] + ".png"
        plot(args.plot, png)
        print(f"wrote {png}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU; use --plot to draw recorded results", file=sys.stderr)
        return 2
    run(args.out, args.sweep, args.skip_compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

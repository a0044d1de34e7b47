"""RoPE, SwiGLU and RMSNorm forward+backward at Llama-3-8B shapes: minilora's Triton kernels beside PyTorch eager,
torch.compile and Liger-Kernel, each op with its copy ceiling, all timed by benchmarks/harness.py in one call.

Every implementation gets the same treatment: warm-up, then rotated rounds with the same number of timed calls;
minilora runs with the launch settings it ships with (the default heuristic). "TB/s" = floor bytes / median time,
floor = each tensor the op must touch read once and written once:
  RoPE     fwd reads q, k and writes q', k'; bwd reads dq', dk' and writes dq, dk   -> 4 (|q| + |k|) bytes
  SwiGLU   fwd reads g, u, writes h;  bwd reads dh, g, u, writes dg, du           -> 8 n bytes
  RMSNorm  fwd reads x, writes y;     bwd reads dy, x, writes dx                  -> 5 n bytes
(cos/sin, the weight and per-row statistics are small and left out.) "pct_of_copy" = the copy's median time over the
op's, the copy moving the same floor bytes in the same rotation. Peak GiB = allocated during one call above what
was allocated before it. --sweep adds a separate comparison of the kernels' launch settings (each setting timed the
same way) to show what the default leaves on the table.

    python -m benchmarks.bench_elementwise --out DIR          # GPU: DIR/elementwise.json + .png
    python -m benchmarks.bench_elementwise --smoke --out DIR  # tiny shapes, CPU (Triton interpreter): code path
    python -m benchmarks.bench_elementwise --plot FILE.json   # the PNG of a recorded file
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks import harness

OPS = ("rope", "swiglu", "rmsnorm")
NAMES = {"rope": "rope fwd+bwd", "swiglu": "swiglu fwd+bwd", "rmsnorm": "rmsnorm fwd+bwd"}
PLOT_IMPLS = ("torch eager", "torch.compile", "liger", "minilora")


def liger_functions():
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        return {"rope": LigerRopeFunction.apply, "swiglu": LigerSiLUMulFunction.apply,
                "rmsnorm": LigerRMSNormFunction.apply}
    except ImportError as err:
        print(f"Liger-Kernel not importable ({err}); its rows are left out")
        return {}


def cases(device: str, smoke: bool):
    """{op: (inputs dict, floor bytes, make_step(f) -> callable)} at Llama-3-8B shapes (tiny ones for --smoke)."""
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    n_tok, inter, hid = (16, 64, 64) if smoke else (8 * 2048, 14336, 4096)
    b, s, nh, nkv, hd = (1, 8, 4, 2, 16) if smoke else (8, 2048, 32, 8, 128)
    out = {}

    g = torch.randn(n_tok, inter, device=device, dtype=dt, requires_grad=True)
    u = torch.randn(n_tok, inter, device=device, dtype=dt, requires_grad=True)
    dh = torch.randn(n_tok, inter, device=device, dtype=dt)

    def swiglu_step(f):
        def step():
            f(g, u).backward(dh)
            g.grad = u.grad = None
        return step
    out["swiglu"] = (8 * g.numel() * g.element_size(), swiglu_step)

    q = torch.randn(b, nh, s, hd, device=device, dtype=dt, requires_grad=True)
    k = torch.randn(b, nkv, s, hd, device=device, dtype=dt, requires_grad=True)
    inv = 1.0 / (500000 ** (torch.arange(0, hd, 2, device=device).float() / hd))
    ang = torch.outer(torch.arange(s, device=device).float(), inv)
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().to(dt)[None], ang.sin().to(dt)[None]
    dq, dk = torch.randn_like(q), torch.randn_like(k)

    def rope_step(f):
        def step():
            a, c = f(q, k, cos, sin)
            torch.autograd.backward([a, c], [dq, dk])
            q.grad = k.grad = None
        return step
    out["rope"] = (4 * (q.numel() + k.numel()) * q.element_size(), rope_step)

    x = torch.randn(n_tok, hid, device=device, dtype=dt, requires_grad=True)
    w = torch.ones(hid, device=device, dtype=dt, requires_grad=True)
    dy = torch.randn_like(x)

    def rms_step(f):
        def step():
            f(x, w, 1e-6).backward(dy)
            x.grad = w.grad = None
        return step
    out["rmsnorm"] = (5 * x.numel() * x.element_size(), rms_step)
    return out


SWEEPS = {  # (module attribute TUNING of each kernel file, the settings tried)
    "swiglu": [dict(block=bl, num_warps=w) for bl, w in itertools.product((1024, 2048, 4096), (4, 8))],
    "rope": [dict(block_h=h, block_t=t, num_warps=w) for h, t, w in itertools.product((1, 2, 4), (16, 32), (4, 8))],
    "rmsnorm": [dict(rows=r, programs_per_sm=p, num_warps=w) for r, p, w in itertools.product((1, 2), (2, 4), (4, 8))],
}


def run(args) -> harness.Results:
    from minilora.kernels import rmsnorm, rope, swiglu
    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(0)
    res = harness.Results("elementwise", device, notes=(
        "fwd+bwd, " + ("tiny shapes (smoke)" if args.smoke else "Llama-3-8B shapes, bf16: rope b8 s2048 h32/8 d128; "
                       "swiglu 16384x14336; rmsnorm 16384x4096") +
        f"; warm-up {args.warmup}, {args.rounds} rotated rounds x {args.reps} calls per implementation; each op "
        "with a device copy of its floor bytes in the same rotation; minilora at its shipped launch settings."))
    res.autosave(args.out, harness.result_stem("elementwise", device, args.smoke))
    modules = {"rope": rope, "swiglu": swiglu, "rmsnorm": rmsnorm}
    reference = {"rope": rope.rope_reference, "swiglu": swiglu.swiglu_reference, "rmsnorm": rmsnorm.rms_norm_reference}
    # SwiGLU's backward reuses gate/up as in the model, where they are matmul outputs; here they are leaf tensors,
    # for which the default would copy, so the benchmark asks for the model's behaviour (Liger overwrites too).
    fast = {"rope": rope.rope_fast, "swiglu": lambda a, b: swiglu.swiglu_fast(a, b, inplace_backward=True),
            "rmsnorm": rmsnorm.rms_norm_fast}
    liger = {} if args.smoke else liger_functions()
    for op in args.ops.split(","):
        nbytes, make = cases(device, args.smoke)[op]
        impls = {"torch eager": make(reference[op])}
        if not args.skip_compile:
            impls["torch.compile"] = make(torch.compile(reference[op]))
        if op in liger:
            impls["liger"] = make(liger[op])
        impls["minilora"] = make(fast[op])
        res.compare(NAMES[op], impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup, nbytes=nbytes)
        if op == "rmsnorm":
            x = torch.randn(16 if args.smoke else 8 * 2048, 64 if args.smoke else 4096, device=device,
                            dtype=torch.float32 if args.smoke else torch.bfloat16)
            w = torch.ones(x.shape[-1], device=device, dtype=x.dtype)

            def fwd(f):
                def call():
                    with torch.no_grad():
                        f(x, w, 1e-6)
                return call
            res.compare("rmsnorm fwd only", {"torch eager": fwd(reference[op]), "minilora": fwd(fast[op])},
                        rounds=args.rounds, reps=args.reps, warmup=args.warmup, nbytes=2 * x.numel() * x.element_size())
        if args.sweep and hasattr(modules[op], "TUNING"):
            tuning = modules[op].TUNING
            shipped = dict(tuning)
            settings = SWEEPS[op][:2] if args.smoke else SWEEPS[op]

            def with_setting(setting, step=make(fast[op])):
                def call():
                    tuning.update(setting)
                    try:
                        step()
                    finally:
                        tuning.update(shipped)
                return call
            sweep = {"shipped default": make(fast[op])}
            sweep.update({" ".join(f"{k}={v}" for k, v in s.items()): with_setting(s) for s in settings})
            res.compare(f"{op} launch sweep", sweep, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                        nbytes=nbytes, measure_peak=False)
        if device == "cuda":
            torch.cuda.empty_cache()
    return res


def plot(json_path: str, png_path: str | None = None, show: bool = False):
    """Left: TB/s at the floor bytes (bar = median, whisker = [min–max]) with each op's copy ceiling.
    Right: peak GiB."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = harness.load_results(json_path)
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.2
    for i, impl in enumerate(PLOT_IMPLS):
        xs, tbs, lo, hi, mem = [], [], [], [], []
        for j, op in enumerate(OPS):
            row = next((r for r in data["rows"] if r["name"] == NAMES[op] and r["impl"] == impl and r["reps"]), None)
            if row is None:
                continue
            nbytes = row["bytes"]
            xs.append(j + (i - 1.5) * width)
            tbs.append(row["tb_s"])
            lo.append(row["tb_s"] - nbytes / row["max_ms"] / 1e9)
            hi.append(nbytes / row["min_ms"] / 1e9 - row["tb_s"])
            mem.append(row["peak_gib"] or 0.0)
        if not xs:
            continue
        ax.bar(xs, tbs, width, yerr=[lo, hi], capsize=2, label=impl)
        for x, v in zip(xs, tbs):
            ax.text(x, v + 0.05, f"{v:.2f}", ha="center", fontsize=7)
        ax_mem.bar(xs, mem, width, label=impl)
    for j, op in enumerate(OPS):
        copies = [r for r in data["rows"] if r["impl"] == harness.COPY_IMPL and r["reps"]]
        # each op's own copy; a file converted from an older run has one 1 GiB copy for all three
        copy = next((r for r in copies if r["name"] == NAMES[op]), copies[0] if copies else None)
        if copy:
            ax.hlines(copy["tb_s"], j - 2 * width, j + 2 * width, colors="k", linestyles="--", lw=1,
                      label="device copy (ceiling)" if j == 0 else None)
    ax.set_ylim(0, 1.35 * max([0.1] + [r.get("tb_s") or 0 for r in data["rows"]]))  # room for the legend
    ax.set_xticks(range(len(OPS)), OPS)
    ax.set_ylabel("TB/s at the floor bytes (fwd+bwd)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax_mem.set_xticks(range(len(OPS)), OPS)
    ax_mem.set_ylabel("peak GiB above the inputs (fwd+bwd)")
    v = data["versions"]
    fig.suptitle(f"{data['card']}, torch {v.get('torch')}, triton {v.get('triton')}, {data['date'][:16]}", fontsize=9)
    fig.tight_layout()
    if png_path:
        fig.savefig(png_path, dpi=120)
    if not show:
        plt.close(fig)
    if show:
        plt.show()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of rope,swiglu,rmsnorm")
    harness.add_run_args(ap, reps=20, warmup=3, plot=True)
    ap.add_argument("--sweep", action="store_true", help="also compare the kernels' launch settings")
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile baselines")
    args = ap.parse_args(argv)
    if args.plot:
        return harness.draw_recorded(args.plot, plot)
    if args.smoke:
        args.skip_compile, args.reps, args.warmup = True, 1, 1
    elif not torch.cuda.is_available():
        ap.error("needs a CUDA GPU; --smoke runs tiny shapes on the CPU, --plot draws a recorded file")
    res = run(args)
    harness.finish(res, args.out, harness.result_stem("elementwise", res.device, args.smoke), plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End to end: one QLoRA training step, minilora's ladder stage by stage beside the HF + PEFT + bitsandbytes anchor,
all built in one process and timed in alternation (rotated rounds, the same number of steps each).

Stages (benchmarks/train_step.py): 0 lora-bf16, 1 + nf4, 2 + triton, 3 + fused-ce, 4 + offload; the anchor is
benchmarks/anchor_hf.py's recipe, twice from one model and checkpoint: gradient checkpointing on (its leanest) and
off (its fastest). Per row: median step ms [min–max] over every timed step, tokens/s, peak GiB (what
the stack keeps between steps + the step's own peak above that), loss, and model-FLOPs utilisation
MFU = 6·N_params·tokens / step time / peak dense bf16 (the card's matmul ceiling measured in this call; the
datasheet's 989 TFLOP/s for H100/H200 SXM where it was not measured — the JSON says which).

    python -m benchmarks.bench_e2e --shape 1b --out DIR       # Llama-3.2-1B shape, B4 S2048 (GPU)
    python -m benchmarks.bench_e2e --shape 8b --out DIR       # Llama-3-8B shape, B2 S2048 (GPU)
    python -m benchmarks.bench_e2e --smoke --out DIR          # tiny model on a CPU: the code path only
--profile adds one torch.profiler step per stack and writes its table beside the JSON (where the step goes).
"""
from __future__ import annotations

import argparse
import math
import pathlib

import torch

from benchmarks import harness
from benchmarks.shapes import SHAPES, shape_of
from benchmarks.train_step import STAGES, add_resident, add_throughput, minilora_stage, model_flops_per_token
from minilora.io.atomic import write_text


def profile_table(step, device: str) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30)


def run(args) -> harness.Results:
    device, name, config, batch, seq, dtype = shape_of(args)
    stages = [int(s) for s in args.stages.split(",") if s != ""]
    benchmark = getattr(args, "benchmark", None) or f"e2e-{args.shape}"
    res = harness.Results(benchmark, device, command=getattr(args, "command", None), notes=(
        f"training step, {name} shape{' (smoke: tiny config)' if args.smoke else ''}, random weights, LoRA r16 on "
        f"7 projections, AdamW, B{batch} S{seq}; stacks built in one process, timed in alternation: warm-up "
        f"{args.warmup} step(s) + {args.rounds} rotated rounds x {args.reps} step(s) each. peak_gib = resident "
        f"(weights, adapters, optimizer state, batch: growth of allocated memory across build + first step) + the "
        f"step's peak above it. MFU = 6*N_params*tokens / step time / peak dense bf16."))
    res.autosave(args.out, harness.result_stem(benchmark, device, args.smoke))
    peak_tflops, peak_source = (None, "not measured (CPU)")
    if device == "cuda":
        peak_tflops, peak_source = harness.matmul_ceiling(res, device) if args.matmul_ceiling \
            else harness.datasheet_peak(device)
    res.extra["config"] = {"model": name, "batch": batch, "seq": seq, "stages": [STAGES[s] for s in stages],
                           "anchor": args.anchor, "mfu_peak_tflops": peak_tflops, "mfu_peak_source": peak_source,
                           "n_params": model_flops_per_token(config) / 6}
    steps = {}
    for s in stages:
        res.log(f"building stage {STAGES[s]}")
        steps[STAGES[s]] = minilora_stage(config, s, batch, seq, device, dtype)
    if args.anchor != "none":
        from benchmarks.anchor_hf import anchor_steps, default_cache_dir
        cache = None if args.smoke else (args.anchor_cache or default_cache_dir(args.shape))
        anchors = anchor_steps(config, batch, seq, device, mode=args.anchor, dtype=dtype, cache_dir=cache,
                               log=res.log)  # checkpointing on (the recipe) and off (HF's fastest), one model
        steps = {**{a.name: a for a in anchors}, **steps}
    rows = res.compare(f"{name} B{batch} S{seq}", steps, rounds=args.rounds, reps=args.reps, warmup=args.warmup)
    flops = model_flops_per_token(config)
    for row in rows:
        step = steps[row["impl"]]
        add_resident(row, step.resident_bytes, device)
        add_throughput(row, step.tokens, flops, peak_tflops)
        loss = step.loss_value()
        row["loss"] = loss if loss is None or math.isfinite(loss) else None
    if args.profile:
        out = pathlib.Path(args.out)
        for label, step in steps.items():
            text = profile_table(step, device)
            slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
            write_text(out / f"e2e-{args.shape}-profile-{slug}.txt", text)
            res.log(f"--- profile of {label}\n{text}")
    return res


def ladder_table(data: dict) -> str:
    """The ladder beside the anchor as the lessons print it, from a recorded result (or `Results.to_dict()`):
    per stack the step's median ms [min–max], tokens/s, peak GiB, MFU, and the ratios to the HF anchor."""
    rows = [r for r in data["rows"] if r.get("tok_s") or r.get("error")]
    anchor = next((r for r in rows if r["impl"].startswith("HF") and r.get("tok_s")), None)
    cfg = data.get("config", {})
    lines = [f"{cfg.get('model')} B{cfg.get('batch')} S{cfg.get('seq')} on {data['card']}, {data['date'][:10]}; "
             f"MFU against {cfg.get('mfu_peak_tflops') or 0:.0f} TFLOP/s ({cfg.get('mfu_peak_source')})",
             f"{'stack':22s}{'step ms [min–max]':>28s}{'tok/s':>10s}{'peak GiB':>10s}{'MFU':>7s}"
             f"{'x anchor':>10s}{'mem vs anchor':>15s}"]
    for r in rows:
        if not r.get("tok_s"):
            lines.append(f"{r['impl']:22s}  not measured: {r.get('error', 'not timed')}")
            continue
        span = f"{r['median_ms']:.1f} [{r['min_ms']:.1f}–{r['max_ms']:.1f}]"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
        vs = f"{r['tok_s'] / anchor['tok_s']:.2f}x" if anchor else "—"
        mem = f"{r['peak_gib'] / anchor['peak_gib'] - 1:+.0%}" if anchor and r["peak_gib"] and anchor["peak_gib"] \
            else "—"
        lines.append(f"{r['impl']:22s}{span:>28s}{r['tok_s']:>10,.0f}{peak:>10s}{mfu:>7s}{vs:>10s}{mem:>15s}")
    return "\n".join(lines)


def print_summary(res: harness.Results) -> None:
    print("\n" + ladder_table(res.to_dict()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b", help="1b: Llama-3.2-1B B4; 8b: Llama-3-8B B2")
    ap.add_argument("--batch", type=int, help="override the shape's batch")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--stages", default="0,1,2,3,4", help="comma-separated stage numbers (0..4)")
    ap.add_argument("--anchor", choices=["qlora", "lora", "none"], default="qlora",
                    help="the HF+PEFT(+bitsandbytes) stack timed in the same rotation")
    ap.add_argument("--anchor-cache", help="folder for the anchor's random checkpoint (reused when present)")
    harness.add_run_args(ap, reps=2, warmup=1)
    ap.add_argument("--no-matmul-ceiling", dest="matmul_ceiling", action="store_false",
                    help="use the datasheet bf16 peak for MFU instead of measuring a matmul in this call")
    ap.add_argument("--profile", action="store_true", help="one torch.profiler step per stack, tables to --out")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("the Llama shapes need a CUDA GPU; --smoke runs a tiny model on the CPU")
    res = run(args)
    harness.finish(res, args.out, harness.result_stem(f"e2e-{args.shape}", res.device, args.smoke))
    print_summary(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

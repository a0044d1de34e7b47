"""Where one QLoRA training step's GPU time goes: matmuls, NF4 dequantization, attention, the Triton elementwise
kernels, other PyTorch ops, copies — and the gaps where the GPU waits for the host.

Runs warm-up steps of one end-to-end stage (see bench_e2e.py), then one step under torch.profiler, buckets every
CUDA kernel by name, and reports each bucket's milliseconds and share of the step, the GPU-idle time, and the
model-FLOPs utilisation: 6·N·tokens FLOPs (N = the model's weights; LoRA trains a frozen base, so the backward
computes dX only — with recompute-checkpointing that is forward + forward + dX, i.e. 6·N per token) over the step
time, against the card's dense bf16 peak. Usage (GPU machine, repository root):

    python -m benchmarks.profile_step --model llama-3-8b --batch 2 --seq 2048 --stage 4 --out profile.json
"""
from __future__ import annotations

import argparse
import json
import re
import time

import torch

BUCKETS = [  # first match wins
    ("dequant (NF4)", r"nf4|dequant"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
    ("matmul", r"gemm|cutlass|sm90_xmma|nvjet|wgmma|matmul|ampere|sm80|splitk"),
    ("Triton: rope/rmsnorm/swiglu/CE", r"_rope|_rms|_swiglu|_glu|cross_entropy|_ce_|_lse|softmax"),
    ("copies (H2D/D2H/D2D)", r"memcpy|Memcpy|copy"),
    ("other elementwise / reductions", r".*"),
]


def bucket(name: str) -> str:
    for label, pattern in BUCKETS:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return BUCKETS[-1][0]


def breakdown(prof) -> dict:
    """Bucket the CUDA kernels of a finished torch.profiler run: milliseconds per bucket, the span from the first
    kernel's start to the last one's end, the busy time (sum of kernel times; kernels on a side stream overlap, so
    busy can exceed the span), the idle remainder, and the 25 costliest kernel names."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_bucket: dict[str, float] = {}
    names: dict[str, float] = {}
    for e in kernels:
        ms = e.device_time / 1000
        by_bucket[bucket(e.name)] = by_bucket.get(bucket(e.name), 0.0) + ms
        names[e.name[:90]] = names.get(e.name[:90], 0.0) + ms
    span_ms = (max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)) / 1000
    busy_ms = sum(by_bucket.values())
    return {"buckets_ms": by_bucket, "gpu_span_ms": span_ms, "gpu_busy_ms": busy_ms, "idle_ms": span_ms - busy_ms,
            "kernels": len(kernels), "top_kernels_ms": dict(sorted(names.items(), key=lambda kv: -kv[1])[:25])}


def peak_tflops() -> tuple[float, str]:
    from benchmarks.harness import datasheet_peak
    value, note = datasheet_peak("cuda")
    return (float("nan") if value is None else value), note


def main(argv=None):
    from benchmarks.train_step import STAGES, build_stage_model
    from minilora import ops
    from minilora.models.registry import catalogue_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--stage", type=int, default=len(STAGES) - 1, help=f"0..{len(STAGES) - 1}: {STAGES}")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", help="write the breakdown as JSON here")
    p.add_argument("--host-profile", help="also run one step under cProfile and write its top functions here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = build_stage_model(catalogue_config(args.model), args.stage, "cuda", torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device="cuda")
    n_weights = model.num_parameters() - sum(p.numel() for p in params)

    def step():
        loss = model(x, labels=x, return_logits=args.stage < 3).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from torch.profiler import ProfilerActivity, profile
    with ops.use_kernels("triton" if args.stage >= 2 else "reference"):
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        # memory by phase: what stays (weights, adapters, optimizer state), then the peaks of forward and backward
        static = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = model(x, labels=x, return_logits=args.stage < 3).loss
        torch.cuda.synchronize()
        fwd_peak, after_fwd = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss.backward()
        torch.cuda.synchronize()
        bwd_peak = torch.cuda.max_memory_allocated()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
        memory = {"static_gib": static / 2**30, "forward_peak_gib": fwd_peak / 2**30,
                  "after_forward_gib": after_fwd / 2**30, "backward_peak_gib": bwd_peak / 2**30}
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        plain_ms = 1000 * (time.perf_counter() - t0)
        memory["step_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        if args.host_profile:  # which Python functions cost the host the most (inflated by cProfile's overhead)
            import cProfile
            import io
            import pstats
            host = cProfile.Profile()
            host.enable()
            step()
            torch.cuda.synchronize()
            host.disable()
            text = io.StringIO()
            pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(40)
            with open(args.host_profile, "w") as f:
                f.write(text.getvalue())
    found = breakdown(prof)
    by_bucket, span_ms, busy_ms, names = found["buckets_ms"], found["gpu_span_ms"], found["gpu_busy_ms"], \
        found["top_kernels_ms"]
    kernels = found["kernels"]
    tokens = args.batch * args.seq
    peak, peak_note = peak_tflops()
    mfu = 6 * n_weights * tokens / (plain_ms / 1000) / (peak * 1e12)
    result = {"model": args.model, "batch": args.batch, "seq": args.seq, "stage": STAGES[args.stage],
              "step_ms_unprofiled": plain_ms, "gpu_span_ms": span_ms, "gpu_busy_ms": busy_ms,
              "idle_ms": span_ms - busy_ms, "tokens_per_s": tokens / plain_ms * 1000,
              "weights": n_weights, "mfu": mfu, "memory": memory, "peak_note": peak_note, "kernels": kernels,
              "buckets_ms": by_bucket, "top_kernels_ms": names,
              "card": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"{args.model} B{args.batch} S{args.seq} stage {STAGES[args.stage]!r}: step {plain_ms:.1f} ms "
          f"({result['tokens_per_s']:,.0f} tok/s), MFU {100 * mfu:.1f}% ({peak_note}); {kernels} kernels, "
          f"GPU busy {busy_ms:.1f} of {span_ms:.1f} ms")
    print("  memory GiB: " + ", ".join(f"{k.removesuffix('_gib')} {v:.2f}" for k, v in memory.items()))
    for label, ms in sorted(by_bucket.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<34}{ms:>9.1f} ms {100 * ms / span_ms:>6.1f}%")
    idle = span_ms - busy_ms
    print(f"  {'GPU idle (gaps between kernels)':<34}{idle:>9.1f} ms {100 * idle / span_ms:>6.1f}%")
    for name, ms in list(result["top_kernels_ms"].items())[:12]:
        print(f"    {ms:8.1f} ms  {name}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

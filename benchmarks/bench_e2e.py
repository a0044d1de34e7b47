"""End to end: one LoRA/QLoRA training step, adding minilora's techniques one at a time (the capstone's ablation).

Each stage keeps everything before it and adds one technique:
  1 lora-bf16        bf16 base, LoRA r16 on all 7 projections, plain PyTorch ops, recompute checkpointing
  2 + nf4            the frozen base in NF4 (QLoRA)
  3 + triton         Triton RoPE / SwiGLU / RMSNorm / cross-entropy and the fast-LoRA Functions
  4 + fused-ce       fused linear + cross-entropy: the (tokens × vocab) logits never exist at once
  5 + offload        checkpointed layer inputs kept in CPU memory
Every stage builds the same random-weight model and runs the same steps; the table reports the median step time
(steps 3..N), tokens/s and peak allocated GiB, and "host ms": how long Python took to queue the step (the time
until the last call returned, before waiting for the GPU). host ms close to step ms means the GPU waits for Python.
--host-profile runs one more step under cProfile and prints the Python functions that cost the most. Usage (GPU machine):
  PYTHONPATH=. python benchmarks/bench_e2e.py --model llama-3.2-1b --batch 4 --seq 2048 --out results.json
On a CPU the same script runs a small model (for the lesson), timing only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from minilora import ops
from minilora.lora import get_peft_model
from minilora.models import from_catalogue
from minilora.models.checkpointing import check_mode

STAGES = ["lora-bf16", "+ nf4", "+ triton", "+ fused-ce", "+ offload"]


def build(name: str, stage: int, device: str, dtype: torch.dtype):
    model = from_catalogue(name, dtype=dtype, device=device)
    if stage >= 1:
        from minilora.linear4bit import quantize_model
        quantize_model(model, compute_dtype=dtype)
    get_peft_model(model, r=16, lora_alpha=16, verbose=False)
    model.gradient_checkpointing = check_mode("offload" if stage >= 4 else True)
    return model.train()


def run_stage(name: str, stage: int, batch: int, seq: int, steps: int, device: str, dtype: torch.dtype,
              profile: bool = False, host_profile: bool = False) -> dict:
    torch.manual_seed(0)
    model = build(name, stage, device, dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, host = [], []
    with ops.use_kernels("triton" if stage >= 2 else "reference"):
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(x, labels=x, return_logits=stage < 3).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            host.append(time.perf_counter() - t0)  # Python is done queueing; the GPU may still be working
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        if host_profile:  # one more step under cProfile: which Python functions cost the most host time?
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
            model(x, labels=x, return_logits=stage < 3).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            prof.disable()
            print(f"--- host profile of stage {STAGES[stage]!r} (cProfile, inflated by its own overhead)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        if profile:  # one more step under the profiler: where does the time of this stage go?
            from torch.profiler import ProfilerActivity
            with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model(x, labels=x, return_logits=stage < 3).loss.backward()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
            print(f"--- profile of stage {STAGES[stage]!r}")
            print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=25))
    timed = sorted(times[2:] or times)
    median = timed[len(timed) // 2]
    host_timed = sorted(host[2:] or host)
    host_median = host_timed[len(host_timed) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return {"stage": STAGES[stage], "step_ms": 1000 * median, "tokens_per_s": batch * seq / median,
            "peak_gib": peak, "loss": loss.item(), "host_ms": 1000 * host_median}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-3.2-1b", help="catalogue name (random weights)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--stages", default="0,1,2,3,4", help="comma-separated stage numbers to run")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table for each stage")
    p.add_argument("--host-profile", action="store_true",
                   help="print the Python functions that cost the most host time in one step (cProfile)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = [run_stage(args.model, int(s), args.batch, args.seq, args.steps, device, dtype, args.profile,
                          args.host_profile)
            for s in args.stages.split(",")]
    meta = {"what": f"training step, {args.model} shape, random weights, LoRA r16 on 7 projections, AdamW, "
                    f"B={args.batch} S={args.seq}, median of steps 3..{args.steps}",
            "model": args.model, "batch": args.batch, "seq": args.seq,
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"# {meta}")
    print(f"{'stage':<12}{'step ms':>10}{'host ms':>10}{'tok/s':>12}{'peak GiB':>10}{'loss':>8}")
    for r in rows:
        print(f"{r['stage']:<12}{r['step_ms']:>10.1f}{r['host_ms']:>10.1f}{r['tokens_per_s']:>12,.0f}"
              f"{r['peak_gib']:>10.2f}{r['loss']:>8.3f}")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

"""What each gradient-checkpointing mode costs and saves: peak memory and step time of one LoRA training step on a
Llama-3.2-1B-shaped model (catalogue config, random weights, bf16), batch 4 x 2048 tokens, r=16 on 7 projections.

Modes: off (every activation kept), recompute (each layer's input kept on the GPU, the layer recomputed in the
backward) and offload (the layer inputs kept in pinned CPU memory, copied back just before the recompute). The three
models are built in one process and timed in alternation by benchmarks/harness.py; peak GiB = what the model keeps
between steps + the step's own peak above that.

    python -m benchmarks.gpu_checkpointing --out DIR             # GPU
    python -m benchmarks.gpu_checkpointing --smoke --out DIR     # tiny model on a CPU: the code path only
"""
from __future__ import annotations

import argparse

import torch

from benchmarks import harness
from benchmarks.shapes import smoke_config
from benchmarks.train_step import add_resident, add_throughput, checkpointing_mode, model_flops_per_token

MODES = ("offload", "recompute", False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    harness.add_run_args(ap, reps=2, warmup=0)
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU; --smoke runs a tiny model on the CPU")
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        config, batch, seq, dtype, label = smoke_config(), 2, 32, torch.float32, "tiny (smoke)"
    else:
        from minilora.models.registry import catalogue_config
        config, batch, seq, dtype, label = catalogue_config("llama-3.2-1b"), args.batch, args.seq, torch.bfloat16, \
            "llama-3.2-1b"
    res = harness.Results("gpu-checkpointing", device, notes=(
        f"LoRA step, {label} shape, {dtype}, B{batch} S{seq}, r16 on 7 projections, plain PyTorch ops; models "
        f"built in one process and timed in alternation. peak_gib = resident (weights, adapters, optimizer state) "
        f"+ the step's own peak."))
    res.autosave(args.out, harness.result_stem("gpu-checkpointing", device, args.smoke))
    steps, failed = {}, {}
    for mode in MODES:
        try:
            step = checkpointing_mode(config, mode, batch, seq, device, dtype)
            steps[step.name] = step
        except torch.OutOfMemoryError:
            failed[f"checkpointing {mode if mode else 'off'}"] = "out of memory"
            torch.cuda.empty_cache()
    rows = res.compare(f"{label} B{batch} S{seq}", steps, rounds=args.rounds, reps=args.reps,
                       warmup=args.warmup)
    for name, err in failed.items():
        rows.append(res.add(f"{label} B{batch} S{seq}", name, [], error=err))
    for row in rows:
        step = steps.get(row["impl"])
        if step is None:
            continue
        add_resident(row, step.resident_bytes, device)
        add_throughput(row, step.tokens, model_flops_per_token(config), None)
    harness.finish(res, args.out, harness.result_stem("gpu-checkpointing", device, args.smoke))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

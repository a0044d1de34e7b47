"""LoRA/QLoRA training on 1, 2, 4 ... GPUs with DDP and FSDP: step time, tokens/s per GPU, peak memory per GPU and the
frozen base's bytes per GPU, at a catalogue shape (default Llama-3-8B, random weights, bf16, r=16 on 7 projections,
recompute checkpointing), each configuration trained through `minilora.train.Trainer` under torchrun.

    python -m benchmarks.gpu_distributed --gpus 1 2 4 --parallel ddp fsdp --method qlora --out DIR   # GPUs
    python -m benchmarks.gpu_distributed --smoke --out DIR        # tiny model, 1 and 2 CPU processes (gloo)

Each (parallel, N) runs in its own `torchrun --nproc_per_node N` (one process group per configuration), one after
the other, so configurations cannot be alternated inside one process as the harness does elsewhere: each row's
times are the steps after 2 warm-up steps of that run (median [min-max] over `--steps` steps). Rows carry
tokens_per_s_per_gpu, scaling_efficiency (tokens/s per GPU at N over the same mode at 1 GPU), frozen_gib_per_gpu
(the local shards of the frozen base) and the per-rank memory `minilora.memory.estimate_memory_per_rank` predicts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from benchmarks import harness

WARMUP_STEPS = 2


def worker(opts) -> None:
    """One rank of one configuration (started by torchrun): trains through `minilora.finetune.finetune`, and rank 0
    writes its measurements."""
    from minilora.train import distributed
    with distributed.session(opts.parallel) as ctx:
        _worker(opts, ctx)


def _worker(opts, ctx) -> None:
    from minilora import parity
    from minilora.finetune import FineTuneConfig, finetune, quiet
    from minilora.linear4bit import quantize_model
    from minilora.memory import estimate_memory_per_rank
    from minilora.models import build_model
    from minilora.models.registry import catalogue_config, init_weights
    from minilora.train import Example, distributed
    device = distributed.device_for(ctx)
    config = parity.tiny_config() if opts.smoke else catalogue_config(opts.shape)
    dtype = torch.float32 if opts.smoke else torch.bfloat16
    model = build_model(config, dtype=dtype, device=device)
    init_weights(model, std=0.02, seed=0)
    if opts.method == "qlora":
        quantize_model(model, compute_dtype=dtype)
    g = torch.Generator().manual_seed(0)
    n = opts.batch * ctx.world_size * (opts.steps + WARMUP_STEPS)
    data = [Example(ids, list(ids)) for ids in torch.randint(3, config.vocab_size, (n, opts.seq), generator=g).tolist()]
    run = FineTuneConfig(model_name=opts.shape, dataset=data, eval_examples=0, r=16, lora_alpha=16,
                         use_gradient_checkpointing="recompute", per_device_train_batch_size=opts.batch,
                         max_steps=opts.steps + WARMUP_STEPS, warmup_steps=0, max_seq_length=opts.seq,
                         progress=False, parallel=opts.parallel, output_dir=opts.scratch, overwrite_output_dir=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = finetune(run, model=model, say=quiet).trainer
    step_ms = [r["seconds"] * 1e3 for r in trainer.log_history[WARMUP_STEPS:]]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    mine = {"peak_gib": peak, "frozen_gib": distributed.local_shard_bytes(model)["frozen"] / 2**30}
    every = [mine]
    if ctx.enabled:
        every = [None] * ctx.world_size
        torch.distributed.all_gather_object(every, mine)
    predicted = estimate_memory_per_rank(config, opts.method, ctx.world_size, "zero3" if ctx.parallel == "fsdp"
                                         else "ddp", r=16, dtype=dtype, batch_size=opts.batch, seq_len=opts.seq,
                                         gradient_checkpointing=True)
    if ctx.is_main:
        peaks = [r["peak_gib"] for r in every if r["peak_gib"] is not None]
        with open(opts.row_out, "w") as f:
            json.dump({"step_ms": step_ms, "peak_gib": max(peaks) if peaks else None,
                       "frozen_gib_per_gpu": max(r["frozen_gib"] for r in every),
                       "predicted_gib_per_gpu": round(predicted.total / 2**30, 4),
                       "predicted_gib_per_gpu_without_activations":
                           round((predicted.total - predicted.activations) / 2**30, 4)}, f)


def launch(opts, parallel: str, gpus: int, row_out: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
           "-m", "benchmarks.gpu_distributed", "--worker", "--parallel", parallel, "--method", opts.method,
           "--shape", opts.shape, "--batch", str(opts.batch), "--seq", str(opts.seq), "--steps", str(opts.steps),
           "--scratch", opts.scratch, "--row_out", row_out] + (["--smoke"] if opts.smoke else [])
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=opts.timeout)


def drive(opts) -> int:
    device = "cpu" if opts.smoke else "cuda"
    label = "tiny (smoke)" if opts.smoke else opts.shape
    res = harness.Results("gpu-distributed", device, notes=(
        f"{opts.method} training step, {label} shape, {'fp32' if opts.smoke else 'bf16'}, B{opts.batch} per GPU, "
        f"S{opts.seq}, r16 on 7 projections, recompute checkpointing; one torchrun per row, run one after the other; "
        f"times = the steps after {WARMUP_STEPS} warm-up steps. peak_gib = the largest peak over the ranks."))
    res.autosave(opts.out, harness.result_stem("gpu-distributed", device, opts.smoke))
    name = f"{label} {opts.method} B{opts.batch}/GPU S{opts.seq}"
    per_gpu_at_1 = {}
    for parallel in opts.parallel:
        for gpus in opts.gpus:
            row_out = os.path.join(opts.scratch, f"row-{parallel}-{gpus}.json")
            if os.path.exists(row_out):
                os.remove(row_out)
            done = launch(opts, parallel, gpus, row_out)
            impl = f"{parallel} x{gpus}"
            if done.returncode != 0 or not os.path.exists(row_out):
                res.add(name, impl, [], gpus=gpus, parallel=parallel,
                        error=(done.stderr or done.stdout)[-1500:] or f"exit status {done.returncode}")
                continue
            with open(row_out) as f:
                m = json.load(f)
            tokens = opts.batch * gpus * opts.seq
            median_s = sorted(m["step_ms"])[len(m["step_ms"]) // 2] / 1e3
            per_gpu = tokens / median_s / gpus
            per_gpu_at_1.setdefault(parallel, per_gpu if gpus == 1 else None)
            base = per_gpu_at_1.get(parallel)
            res.add(name, impl, m["step_ms"], m["peak_gib"], gpus=gpus, parallel=parallel,
                    tokens_per_s=round(tokens / median_s, 1), tokens_per_s_per_gpu=round(per_gpu, 1),
                    scaling_efficiency=round(per_gpu / base, 4) if base else None,
                    frozen_gib_per_gpu=round(m["frozen_gib_per_gpu"], 4),
                    predicted_gib_per_gpu=m["predicted_gib_per_gpu"],
                    predicted_gib_per_gpu_without_activations=m["predicted_gib_per_gpu_without_activations"])
    path = res.write(opts.out, harness.result_stem("gpu-distributed", device, opts.smoke))
    print(f"wrote {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=None, help="numbers of processes (default 1 2 4; smoke 1 2)")
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--method", default="qlora", choices=["lora", "qlora"])
    p.add_argument("--shape", default="llama-3-8b", help="a catalogue name (minilora.models.registry)")
    p.add_argument("--batch", type=int, default=None, help="sequences per GPU per step (default 2; smoke 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 2048; smoke 32)")
    p.add_argument("--steps", type=int, default=5, help=f"measured steps per run (after {WARMUP_STEPS} warm-up)")
    p.add_argument("--timeout", type=int, default=540, help="seconds one configuration may take")
    p.add_argument("--scratch", default="/tmp/minilora-gpu-distributed")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (gloo): checks the code path only")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row_out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    opts = parser().parse_args(argv)
    opts.gpus = opts.gpus or ([1, 2] if opts.smoke else [1, 2, 4])
    opts.batch = opts.batch or 2
    opts.seq = opts.seq or (32 if opts.smoke else 2048)
    os.makedirs(opts.scratch, exist_ok=True)
    if opts.worker:
        opts.parallel = opts.parallel[0]
        worker(opts)
        return 0
    if not opts.smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_distributed.py measures GPUs and none is visible; --smoke runs a tiny model "
                         "on CPU processes")
    if not opts.smoke and max(opts.gpus) > torch.cuda.device_count():
        raise SystemExit(f"--gpus {max(opts.gpus)} but {torch.cuda.device_count()} GPU(s) are visible")
    return drive(opts)


if __name__ == "__main__":
    sys.exit(main())

"""GPU: LoRA/QLoRA training on 1, 2, 4 ... GPUs with DDP and FSDP — tokens/s per GPU, peak memory per GPU and the
4-bit base's bytes per GPU, at a catalogue shape (default Llama-3-8B, random weights, bf16).

    python benchmarks/gpu_distributed.py --gpus 1 2 4 --parallel ddp fsdp --method qlora [--out benchmarks/results]

The driver starts one ``torchrun --nproc_per_node N`` per (N, parallel) and collects rank 0's row; each worker
builds the model on its GPU, adds LoRA (r=16, 7 projections), trains a few steps through `minilora.train.Trainer`
(per-GPU batch x seq tokens a micro-batch, recompute checkpointing) and reports the median of the measured steps.
Scaling efficiency at N GPUs = tokens/s per GPU at N / tokens/s at 1. Per-rank memory predicted by
`minilora.memory.estimate_memory_per_rank` is written next to the measurement. Writes one JSON file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(opts) -> None:
    """One rank of one configuration (run by torchrun)."""
    import torch
    from minilora.linear4bit import quantize_model
    from minilora.lora import get_peft_model
    from minilora.memory import estimate_memory_per_rank
    from minilora.models import from_catalogue
    from minilora.models.registry import catalogue_config
    from minilora.train import Example, Trainer, TrainingArguments, distributed
    ctx = distributed.init_from_env(opts.parallel)
    model = from_catalogue(opts.shape, dtype=torch.bfloat16, device="cuda")
    if opts.method == "qlora":
        quantize_model(model, compute_dtype=torch.bfloat16)
        torch.cuda.empty_cache()
    get_peft_model(model, r=16, lora_alpha=16, verbose=False)
    model.gradient_checkpointing = "recompute"
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    n_examples = opts.batch * ctx.world_size * (opts.steps + 2)
    data = [Example(ids, list(ids)) for ids in torch.randint(0, V, (n_examples, opts.seq), generator=g).tolist()]
    args = TrainingArguments(output_dir=opts.scratch, per_device_train_batch_size=opts.batch,
                             gradient_accumulation_steps=1, max_steps=opts.steps + 2, warmup_steps=0,
                             max_seq_length=opts.seq, progress_bar=False, parallel=opts.parallel,
                             mixed_precision="bf16")
    trainer = Trainer(model, args, data, pad_token_id=0)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = trainer.log_history[2:]  # the first two steps warm up (allocator, kernels, NCCL)
    seconds = sorted(r["seconds"] for r in measured)[len(measured) // 2]
    tokens_per_step = opts.batch * ctx.world_size * opts.seq
    held = distributed.local_shard_bytes(model, trainer.optimizer)
    peak = torch.cuda.max_memory_allocated() / 2**30
    rows = [None] * ctx.world_size if ctx.enabled else None
    mine = {"rank": ctx.rank, "peak_gib": round(peak, 3), "frozen_gib": round(held["frozen"] / 2**30, 4)}
    if ctx.enabled:
        torch.distributed.all_gather_object(rows, mine)
    else:
        rows = [mine]
    stage = "zero3" if ctx.parallel == "fsdp" else "ddp"
    predicted = estimate_memory_per_rank(catalogue_config(opts.shape), opts.method, ctx.world_size, stage, r=16,
                                         batch_size=opts.batch, seq_len=opts.seq, gradient_checkpointing=True)
    if ctx.is_main:
        row = {"gpus": ctx.world_size, "parallel": ctx.parallel or "single", "method": opts.method,
               "shape": opts.shape, "batch_per_gpu": opts.batch, "seq": opts.seq, "step_s": round(seconds, 4),
               "tokens_per_s": round(tokens_per_step / seconds, 1),
               "tokens_per_s_per_gpu": round(tokens_per_step / seconds / ctx.world_size, 1),
               "peak_gib_per_gpu": max(r["peak_gib"] for r in rows), "frozen_gib_per_gpu": rows[0]["frozen_gib"],
               "predicted_gib_per_gpu_without_activations": round(
                   (predicted.total - predicted.activations) / 2**30, 4), "ranks": rows}
        with open(opts.row_out, "w") as f:
            json.dump(row, f)
    if ctx.enabled:
        torch.distributed.destroy_process_group()


def drive(opts) -> dict:
    import torch
    rows = []
    for parallel in opts.parallel:
        for n in opts.gpus:
            row_out = os.path.join(opts.scratch, f"row-{parallel}-{n}.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   os.path.abspath(__file__), "--worker", "--parallel", parallel, "--method", opts.method,
                   "--shape", opts.shape, "--batch", str(opts.batch), "--seq", str(opts.seq),
                   "--steps", str(opts.steps), "--scratch", opts.scratch, "--row_out", row_out]
            print("$", " ".join(cmd), flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not os.path.exists(row_out):
                row = {"gpus": n, "parallel": parallel, "error": (done.stderr or done.stdout)[-2000:]}
            else:
                with open(row_out) as f:
                    row = json.load(f)
                row["parallel"] = parallel  # one GPU runs without a process group: label it as asked
            print(row, flush=True)
            rows.append(row)
    for parallel in opts.parallel:  # scaling efficiency against the same mode on 1 GPU
        ok = {r["gpus"]: r for r in rows if r.get("parallel") == parallel and "error" not in r}
        if 1 in ok:
            for r in ok.values():
                r["scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / ok[1]["tokens_per_s_per_gpu"], 4)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    import triton
    return {"what": f"{opts.method} training step, {opts.shape} catalogue shape, bf16, B{opts.batch}/GPU "
                    f"S{opts.seq}, r16 on 7 projections, recompute checkpointing",
            "card": torch.cuda.get_device_name(), "gpus_on_host": torch.cuda.device_count(),
            "versions": {"torch": torch.__version__, "triton": triton.__version__,
                         "nccl": ".".join(map(str, torch.cuda.nccl.version()))},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "rows": rows}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4], help="numbers of GPUs to run on")
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--method", default="qlora", choices=["lora", "qlora"])
    p.add_argument("--shape", default="llama-3-8b", help="a catalogue name (minilora.models.registry)")
    p.add_argument("--batch", type=int, default=2, help="sequences per GPU per step")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5, help="measured steps (after 2 warm-up steps)")
    p.add_argument("--scratch", default="/tmp/minilora-gpu-distributed")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row_out", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> None:
    opts = parser().parse_args(argv)
    os.makedirs(opts.scratch, exist_ok=True)
    if opts.worker:
        opts.parallel = opts.parallel[0] if isinstance(opts.parallel, list) else opts.parallel
        worker(opts)
        return
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_distributed.py measures GPUs: none is visible here")
    result = drive(opts)
    os.makedirs(opts.out, exist_ok=True)
    name = (f"gpu-distributed-{opts.method}-{torch.cuda.get_device_name().split()[-1].lower()}-"
            f"{time.strftime('%Y-%m-%d', time.gmtime())}.json")
    with open(os.path.join(opts.out, name), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

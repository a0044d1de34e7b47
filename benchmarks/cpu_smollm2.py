"""CPU benchmark: SmolLM2-135M shape, batch 4 x 256 tokens — forward tokens/s and LoRA train-step tokens/s for
minilora next to transformers + PEFT, in the same run, each side in its own process (so peak memory is its own).

    python benchmarks/cpu_smollm2.py [--threads 2] [--steps 4] [--out benchmarks/results]

Both sides use random weights of the same shape (speed does not depend on the values), fp32, LoRA r=16 on all 7
projections, AdamW, labels = inputs. minilora is also timed with QLoRA (NF4 base weights, dequantized every step)
to show what 4-bit storage costs on a CPU. Reported: the median step after one warm-up step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

B, T, R = 4, 256, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _time_steps(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[1:]  # the first step pays for allocation and lazy initialization


def bench_minilora(mode: str, steps: int) -> dict:
    import torch
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from minilora.lora import get_peft_model
    from minilora.models import from_catalogue
    model = from_catalogue("smollm2-135m", dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    if mode == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                model(ids)
        return {"times": _time_steps(step, steps)}
    if mode == "qlora":
        from minilora.linear4bit import quantize_model
        quantize_model(model)
    get_peft_model(model, r=R, lora_alpha=R, target_modules=TARGETS, verbose=False)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(ids, ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"times": _time_steps(step, steps)}


def bench_hf(mode: str, steps: int) -> dict:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                      tie_word_embeddings=True, max_position_embeddings=8192)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    info = {"attn_implementation": getattr(model.config, "_attn_implementation", None),
            "transformers": transformers.__version__}
    if mode == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                model(ids)
        return {"times": _time_steps(step, steps), **info}
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(r=R, lora_alpha=R, target_modules=TARGETS, lora_dropout=0.0,
                                                       task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"times": _time_steps(step, steps), "peft": peft.__version__, **info}


def child(side: str, mode: str, steps: int, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    result = (bench_minilora if side == "minilora" else bench_hf)(mode, steps)
    result.update(side=side, mode=mode, peak_rss_gib=round(_peak_rss_gib(), 3))
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--label", default="", help="a tag for the result file names (e.g. the machine)")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.steps, args.threads)
    import torch
    runs = [("minilora", "forward"), ("hf", "forward"), ("hf", "lora"), ("minilora", "lora"), ("minilora", "qlora")]
    results = []
    for side, mode in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", side, mode, "--steps", str(args.steps),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{side} {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        r = json.loads(line[len("RESULT "):])
        r["median_s"] = statistics.median(r["times"])
        r["tokens_per_s"] = round(B * T / r["median_s"], 1)
        results.append(r)
        print(f"{side:9s} {mode:8s} {r['tokens_per_s']:8.1f} tok/s  median {r['median_s']:.3f} s  "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    by = {(r["side"], r["mode"]): r for r in results}
    summary = {
        "what": f"SmolLM2-135M shape, random weights, fp32, B{B} S{T}, LoRA r{R} on 7 projections, AdamW",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "threads": args.threads, "cpu": _cpu_name(), "cpus_visible": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)), "python": platform.python_version(),
        "speedup_forward": round(by[("minilora", "forward")]["tokens_per_s"] / by[("hf", "forward")]["tokens_per_s"], 3),
        "speedup_lora_step": round(by[("minilora", "lora")]["tokens_per_s"] / by[("hf", "lora")]["tokens_per_s"], 3),
        "anchor_hf_lora_tok_s_design_md": 184, "results": results,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-smollm2{'-' + args.label if args.label else ''}-"
                                  f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(stem + ".txt", "w") as f:
        f.write(f"# {summary['what']}\n# {summary['date']}, torch {summary['torch']}, {args.threads} threads, "
                f"cpu {summary['cpu']}, affinity {summary['affinity']}\n")
        for r in results:
            f.write(f"{r['side']:9s} {r['mode']:8s} {r['tokens_per_s']:8.1f} tok/s  peak RSS "
                    f"{r['peak_rss_gib']:.2f} GiB  steps {[round(t, 3) for t in r['times']]}\n")
        f.write(f"speed-up forward {summary['speedup_forward']}x, LoRA step {summary['speedup_lora_step']}x\n")
    print(f"speed-up forward {summary['speedup_forward']}x, LoRA step {summary['speedup_lora_step']}x -> {stem}.json")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()

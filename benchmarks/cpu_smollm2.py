"""CPU benchmark: SmolLM2-135M shape, batch 4 x 256 tokens — forward tokens/s and LoRA train-step tokens/s for
minilora next to transformers + PEFT, in the same run, each measurement in its own process (so peak memory is its
own). The harness's rule across processes: every implementation runs once per round for `--rounds` rounds (at
least 3) with the order rotated, each time one untimed warm-up step and `--steps` timed steps, so each gets the same
number of timed steps; rows report the median and [min–max] over all of them.

    python -m benchmarks.cpu_smollm2 [--threads 2] [--steps 2] [--out DIR]
    python -m benchmarks.cpu_smollm2 --smoke --out DIR      # 2 blocks, 2 x 32 tokens: the code path only

Both sides use random weights of the same shape (speed does not depend on the values), fp32, LoRA r=16 on all 7
projections, AdamW, labels = inputs. minilora is also timed with QLoRA (NF4 base weights, dequantized every step)
to show what 4-bit storage costs on a CPU. Peak GiB here is the child process's peak resident set (ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import harness

B, T, R = 4, 256, 16
LAYERS = None  # None: the catalogue's 30 blocks; --smoke sets 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _time_steps(fn, steps: int) -> list[float]:
    fn()  # untimed: the first step pays for allocation and lazy initialization
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_minilora(mode: str, steps: int) -> dict:
    import torch

    from minilora.lora import get_peft_model
    from minilora.models.config import ModelConfig
    from minilora.models.registry import build_model, catalogue_config, init_weights
    fields = catalogue_config("smollm2-135m").to_dict()
    if LAYERS:
        fields["num_hidden_layers"] = LAYERS
    model = build_model(ModelConfig.from_dict(fields), dtype=torch.float32)
    init_weights(model, seed=0)
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
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=LAYERS or 30,
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


RUNS = [("minilora", "forward"), ("hf", "forward"), ("hf", "lora"), ("minilora", "lora"), ("minilora", "qlora")]


def _results(times: dict, info: dict, notes: str, args) -> harness.Results:
    res = harness.Results("cpu-smollm2", "cpu", notes=notes, log=lambda *_: None)
    for side, mode in RUNS:
        extra = dict(info[(side, mode)])
        peak = extra.pop("peak_rss_gib", None)
        row = res.add(f"{mode} step" if mode != "forward" else "forward", side, times[(side, mode)], peak=peak,
                      mode=mode, **extra)
        row["tok_s"] = B * T / (row["median_ms"] / 1e3) if row["reps"] else None
    by = {(r["impl"], r["mode"]): r for r in res.rows}
    if all(by[k]["tok_s"] for k in by):
        res.extra["speedup"] = {
            "forward": by[("minilora", "forward")]["tok_s"] / by[("hf", "forward")]["tok_s"],
            "lora_step": by[("minilora", "lora")]["tok_s"] / by[("hf", "lora")]["tok_s"]}
    res.extra["config"] = {"threads": args.threads, "batch": B, "seq": T, "r": R, "layers": LAYERS or 30,
                           "affinity": sorted(os.sched_getaffinity(0))}
    return res


def main(argv=None) -> int:
    global B, T, LAYERS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per child (after one untimed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    ap.add_argument("--smoke", action="store_true", help="2 blocks, batch 2 x 32 tokens (code path only)")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        B, T, LAYERS = 2, 32, 2
    if args.child:
        return child(*args.child, args.steps, args.threads)
    if args.rounds < 3:
        ap.error("--rounds must be at least 3 (the order rotates between rounds)")
    notes = (f"SmolLM2-135M shape{' (smoke: 2 blocks)' if args.smoke else ''}, random weights, fp32, B{B} S{T}, "
             f"LoRA r{R} on 7 projections, AdamW, {args.threads} threads; each measurement in its own process, "
             f"rotated rounds x (1 untimed + {args.steps} timed steps). peak_gib = the child's peak RSS.")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stem = harness.result_stem("cpu-smollm2", "cpu", args.smoke)
    times = {run: [] for run in RUNS}
    info = {run: {} for run in RUNS}
    for done, order in enumerate(harness.rotation(RUNS, args.rounds), 1):
        for side, mode in order:
            cmd = [sys.executable, "-m", "benchmarks.cpu_smollm2", "--child", side, mode, "--steps",
                   str(args.steps), "--threads", str(args.threads)] + (["--smoke"] if args.smoke else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{side} {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            r = json.loads(line[len("RESULT "):])
            step_ms = [1e3 * t for t in r.pop("times")]
            times[(side, mode)] += step_ms
            info[(side, mode)]["peak_rss_gib"] = max(r["peak_rss_gib"], info[(side, mode)].get("peak_rss_gib", 0))
            info[(side, mode)].update({k: v for k, v in r.items() if k not in ("side", "mode", "peak_rss_gib")})
            print(f"  {side:9s} {mode:8s} steps {[round(t) for t in step_ms]} ms", flush=True)
        res = _results(times, info, notes + f" Rounds completed: {done} of {args.rounds}.", args)
        path = res.write(args.out, stem)  # after every round: a run cut off keeps equal counts per implementation
    harness.print_table(res.rows, f"wrote {path}")
    for r in res.rows:
        print(f"  {r['impl']:9s} {r['mode']:8s} {r['tok_s']:8.1f} tok/s")
    print(f"  minilora / HF: forward {res.extra['speedup']['forward']:.2f}x, LoRA step "
          f"{res.extra['speedup']['lora_step']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

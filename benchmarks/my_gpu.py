"""Your own GPU numbers: minilora's ladder and the HF + PEFT + bitsandbytes anchor, measured on YOUR card.

Every speed figure in the lessons was recorded on the project's GPU. This command measures the same thing on
yours, with the same harness (untimed warm-up, rotated rounds, median and [min–max]) and prints the table the
lessons print, so you can explain your own ratios in the journal:

    python -m benchmarks.my_gpu              # one NVIDIA GPU, 16 GB or more: a few minutes
    python -m benchmarks.my_gpu --smoke      # a tiny model on the CPU: checks that everything runs (seconds)

The shape is Llama-3.2-1B (random weights, LoRA r16 on the 7 projections, sequences of 2048 tokens); the batch is
the largest of 4, 2, 1 that leaves room on your card for all six stacks at once (they are timed in alternation, so
they live side by side), or `--batch N`. It needs transformers, peft and bitsandbytes (`pip install -e ".[dev]"`).

The result goes to benchmarks/results/mine/my-gpu-<card>-<date>.json (results schema 1: card, versions, date,
commit). The lessons and the capstone read it with `my_gpu_results()` below, beside the project's recorded run.
"""
from __future__ import annotations

import argparse
import pathlib
import shlex
import sys

import torch

from benchmarks import harness
from benchmarks.bench_e2e import ladder_table
from benchmarks.bench_e2e import run as run_ladder

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARK = "my-gpu"
MINE = ROOT / "benchmarks" / "results" / "mine"   # a learner's own runs (git-ignored)
RECORDED = ROOT / "benchmarks" / "results"        # the project's recorded run of this command
SHAPE = "1b"
# What the six stacks keep on the card between steps (all alive at once), and the largest stack's own step peak per
# sequence of 2048 tokens — from the recorded Llama-3.2-1B run (benchmarks/results/e2e-1b-*.json), rounded up.
RESIDENT_GIB, STEP_PEAK_GIB_PER_ROW = 8.0, 3.2
HEADROOM = 0.85  # leave 15% of the card for the CUDA context, the allocator's slack and the display


def pick_batch(total_gib: float) -> int | None:
    """The largest batch of 2048-token rows (4, 2 or 1) whose estimated peak fits in HEADROOM of the card."""
    for batch in (4, 2, 1):
        if RESIDENT_GIB + STEP_PEAK_GIB_PER_ROW * batch <= HEADROOM * total_gib:
            return batch
    return None


def my_gpu_results(mine: pathlib.Path = MINE, recorded: pathlib.Path = RECORDED) -> tuple[dict | None, dict | None]:
    """(yours, recorded): your newest run of this command (None until you run it) and the project's recorded one
    (None if the checkout has none), both checked against the results schema."""
    found = [harness.latest(folder, BENCHMARK) for folder in (mine, recorded)]
    return tuple(harness.load_results(path) if path else None for path in found)


def ratios(data: dict) -> dict[str, tuple[float, float]]:
    """{stack: (speed-up over the anchor, peak memory relative to the anchor − 1)} for every timed ladder stage. The
    anchor is HF+PEFT+bnb with gradient checkpointing on (the first HF row), as in the lessons."""
    rows = [r for r in data["rows"] if r.get("tok_s")]
    anchor = next((r for r in rows if r["impl"].startswith("HF")), None)
    if anchor is None:
        return {}
    return {r["impl"]: (r["tok_s"] / anchor["tok_s"],
                        r["peak_gib"] / anchor["peak_gib"] - 1 if r["peak_gib"] and anchor["peak_gib"] else None)
            for r in rows if not r["impl"].startswith("HF") and r["impl"] != "torch.mm"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, help="rows of 2048 tokens per step (default: the largest that fits)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--stages", default="0,1,2,3,4", help="comma-separated ladder stages (0..4)")
    harness.add_run_args(ap, reps=2, warmup=1)
    ap.set_defaults(out=str(MINE))
    args = ap.parse_args(argv)
    if args.smoke:
        print("smoke run: a tiny model on the CPU checks the code path; its timings mean nothing")
    elif not torch.cuda.is_available():
        ap.error("no CUDA GPU found: this command measures an NVIDIA GPU. `--smoke` checks it runs on a CPU; the "
                 "lessons show the project's recorded GPU numbers instead")
    else:
        total = torch.cuda.get_device_properties(0).total_memory / harness.GiB
        batch = args.batch or pick_batch(total)
        if batch is None:
            ap.error(f"{torch.cuda.get_device_name()} has {total:.1f} GiB: the six stacks of the 1B ladder need "
                     f"about {RESIDENT_GIB + STEP_PEAK_GIB_PER_ROW:.0f} GiB together. Measure fewer at once "
                     f"(--stages 3,4 --batch 1) or use a card with 16 GB or more")
        args.batch = batch
        print(f"{torch.cuda.get_device_name()}, {total:.1f} GiB: Llama-3.2-1B shape, batch {batch} x {args.seq} "
              f"tokens, six stacks timed in alternation (a few minutes)")
    ladder_args = argparse.Namespace(
        shape=SHAPE, batch=args.batch, seq=args.seq, stages=args.stages, anchor="qlora", anchor_cache=None,
        rounds=args.rounds, reps=args.reps, warmup=args.warmup, out=args.out, smoke=args.smoke,
        matmul_ceiling=True, profile=False, benchmark=BENCHMARK,
        command="python -m benchmarks.my_gpu " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                     else argv)))
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    res = run_ladder(ladder_args)
    path = res.write(args.out, harness.result_stem(BENCHMARK, res.device, args.smoke))
    data = res.to_dict()
    print("\nYour card:\n" + ladder_table(data))
    _, recorded = my_gpu_results(recorded=RECORDED)
    if recorded is not None:
        print("\nRecorded with the project (the same command):\n" + ladder_table(recorded))
    print(f"\nwrote {path}")
    print("Your ratios to the anchor (speed, peak memory): " + "; ".join(
        f"{name} {speed:.2f}x, {mem:+.0%}" if mem is not None else f"{name} {speed:.2f}x"
        for name, (speed, mem) in ratios(data).items()))
    print("Explain them in this week's journal entry (journal/prompts/week1.md and week5.md say how).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

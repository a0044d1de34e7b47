"""Memory per token of context: peak GiB and step time against sequence length, HF + PEFT + bitsandbytes QLoRA beside
minilora, Llama-3-8B shape, batch 1, both stacks built once in one process and timed in alternation at each length.

For every length: warm-up, then rotated rounds (benchmarks/harness.py); a stack that runs out of memory is recorded
as such and left out of the longer lengths. Derived: GPU bytes per token of context between the shortest and the
longest length both stacks ran (slope of peak against length), and minilora's projected longest context on this
card from that slope (and from host memory, where offloaded layer inputs live: L·C·2 bytes a token).
--long N adds one training step of minilora alone at N tokens (timed once; its loss must be finite).

    python -m benchmarks.ctx_mem --lengths 2048,8192,16384,32768 --out DIR                  # GPU
    python -m benchmarks.ctx_mem --lengths 8192 --no-anchor --long 131072 --name long-context-8b --out DIR
    python -m benchmarks.ctx_mem --smoke --out DIR                                          # tiny model, CPU
    python -m benchmarks.ctx_mem --plot DIR/ctx-mem-8b.json                                 # PNG from a record
"""
from __future__ import annotations

import argparse
import math
import os
import resource

import torch

from benchmarks import harness
from benchmarks.train_step import STAGES, add_throughput, minilora_stage, model_flops_per_token


def host_bytes_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def slope(rows: list[dict]) -> float | None:
    """Bytes of peak memory per token between the shortest and the longest length measured."""
    pts = sorted((r["seq"], r["peak_gib"]) for r in rows if r.get("peak_gib") is not None and r["reps"])
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) * harness.GiB / (pts[-1][0] - pts[0][0])


def run(args) -> harness.Results:
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        from benchmarks.shapes import smoke_config
        config, dtype, label = smoke_config(), torch.float32, "tiny (smoke)"
    else:
        from minilora.models.registry import catalogue_config
        config, dtype, label = catalogue_config("llama-3-8b"), torch.bfloat16, "llama-3-8b"
    lengths = [int(s) for s in args.lengths.split(",")]
    stages = [int(s) for s in args.stages.split(",")]
    res = harness.Results("ctx-mem", device, notes=(
        f"{label} shape, B1, QLoRA r16 on 7 projections; HF+PEFT+bitsandbytes (checkpointing on, train mode) and "
        f"minilora stage(s) {[STAGES[s] for s in stages]}, built once, timed in alternation at each length "
        f"(warm-up {args.warmup}, {args.rounds} rotated rounds x {args.reps}). peak_gib = resident + the step's own "
        f"peak; bytes_per_token = slope of peak_gib between the shortest and longest length."))
    res.autosave(args.out, harness.result_stem(args.name, device, args.smoke))
    steps = {}
    first = lengths[0]
    for s in stages:
        steps[STAGES[s]] = minilora_stage(config, s, 1, first, device, dtype)
    if not args.no_anchor:
        from benchmarks.anchor_hf import anchor_step, default_cache_dir
        cache = None if args.smoke else (args.anchor_cache or default_cache_dir("8b"))
        anchor = anchor_step(config, 1, first, device, dtype=dtype, cache_dir=cache, max_seq=max(lengths),
                             log=res.log)
        steps = {anchor.name: anchor, **steps}
    flops = model_flops_per_token(config)
    alive = dict(steps)
    for seq in lengths:
        for step in alive.values():
            step.set_batch(1, seq)
        rows = res.compare(f"B1 S{seq}", alive, rounds=args.rounds, reps=args.reps, warmup=args.warmup)
        for row in rows:
            step = steps[row["impl"]]
            row["seq"] = seq
            row["resident_gib"] = step.resident_bytes / harness.GiB if device == "cuda" else None
            if row["peak_gib"] is not None:
                row["step_peak_gib"] = row["peak_gib"]
                row["peak_gib"] += row["resident_gib"]
            add_throughput(row, seq, flops, None)
            row["loss"] = step.loss_value()
            if row.get("error"):
                alive.pop(row["impl"], None)
                res.log(f"{row['impl']} left out of the longer lengths ({row['error']})")
    derived = {}
    for name in steps:
        mine = [r for r in res.rows if r["impl"] == name]
        per_token = slope(mine)
        derived[name] = {"bytes_per_token": per_token}
    hf = next((n for n in steps if n.startswith("HF")), None)
    for name in steps:
        if name != hf and hf and derived[name]["bytes_per_token"] and derived[hf]["bytes_per_token"]:
            derived[name]["hf_bytes_per_token_ratio"] = derived[hf]["bytes_per_token"] / \
                derived[name]["bytes_per_token"]
    if args.long:
        name = STAGES[max(stages)]
        step = steps[name]
        for other in steps.values():
            if other is not step:
                other.set_batch(1, 1)
        step.set_batch(1, args.long)
        clock = harness.default_clock(device)
        try:
            base = 0
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = clock.mark()
            step()
            end = clock.mark()
            harness._sync(clock)
            peak = (torch.cuda.max_memory_allocated() - base + step.resident_bytes) / harness.GiB \
                if device == "cuda" else None
            loss = step.loss_value()
            row = res.add(f"B1 S{args.long} single step", name, [clock.elapsed_ms(start, end)], peak=peak,
                          seq=args.long, loss=loss, loss_finite=loss is not None and math.isfinite(loss),
                          host_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          note="one step, timed once; peak = resident + the step's own peak")
            add_throughput(row, args.long, flops, None)
        except Exception as err:  # out of memory is a result here
            res.add(f"B1 S{args.long} single step", name, [], seq=args.long, error=harness._error_text(err))
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        host_per_token = config.num_hidden_layers * config.hidden_size * torch.finfo(dtype).bits // 8
        for name in steps:
            if name == hf or not derived[name]["bytes_per_token"]:
                continue
            mine = sorted((r["seq"], r["peak_gib"]) for r in res.rows if r["impl"] == name and r["reps"]
                          and r.get("peak_gib") is not None and "single" not in r["name"])
            seq0, peak0 = mine[0]
            derived[name]["projected_max_tokens_gpu"] = int(seq0 + (total - peak0 * harness.GiB)
                                                            / derived[name]["bytes_per_token"])
            host = host_bytes_available()
            derived[name]["host_bytes_per_token_offloaded"] = host_per_token if "offload" in name else None
            if host and "offload" in name:
                derived[name]["projected_max_tokens_host"] = int(host / host_per_token)
        derived["card_total_gib"] = total / harness.GiB
    res.extra["derived"] = derived
    res.extra["config"] = {"model": label, "batch": 1, "lengths": lengths, "long": args.long}
    return res


def plot(json_path: str, png_path: str | None = None, show: bool = False):
    """Peak GiB (left) and tokens/s (right) against context length, one line per stack."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = harness.load_results(json_path)
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(11, 4))
    for impl in dict.fromkeys(r["impl"] for r in data["rows"]):
        pts = sorted((r["seq"], r["peak_gib"], r.get("tok_s")) for r in data["rows"]
                     if r["impl"] == impl and r["reps"] and r.get("peak_gib") is not None)
        if not pts:
            continue
        ax_m.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
        ax_t.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=impl)
    for ax, label in ((ax_m, "peak GiB allocated"), (ax_t, "tokens/s (median)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens, batch 1)")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{data['config']['model'] if 'config' in data else ''} — {data['card']}, {data['date'][:10]}",
                 fontsize=9)
    fig.tight_layout()
    if png_path:
        fig.savefig(png_path, dpi=110)
    if show:
        plt.show()
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="2048,8192,16384,32768", help="comma-separated sequence lengths")
    ap.add_argument("--stages", default="4", help="minilora ladder stage(s) to measure (default 4, + offload)")
    ap.add_argument("--long", type=int, default=0, help="also one minilora step at this many tokens (0: none)")
    ap.add_argument("--no-anchor", action="store_true", help="leave out the HF+PEFT+bitsandbytes stack")
    ap.add_argument("--name", default="ctx-mem-8b",
                    help="file name prefix (a second call, e.g. only the long step, can use long-context-8b)")
    ap.add_argument("--anchor-cache", help="folder for the anchor's random checkpoint (reused when present)")
    harness.add_run_args(ap, reps=1, warmup=1, plot=True)
    args = ap.parse_args(argv)
    if args.plot:
        return harness.draw_recorded(args.plot, plot)
    if args.smoke:
        args.lengths, args.long, args.warmup = "16,32", args.long or 64, 0
    elif not torch.cuda.is_available():
        ap.error("needs a CUDA GPU; --smoke runs a tiny model on the CPU")
    res = run(args)
    harness.finish(res, args.out, harness.result_stem(args.name, res.device, args.smoke), plot)
    for name, d in res.extra["derived"].items():
        if isinstance(d, dict):
            print(f"  {name}: " + ", ".join(f"{k} {v:,.0f}" if isinstance(v, (int, float)) else f"{k} {v}"
                                            for k, v in d.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

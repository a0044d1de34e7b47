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
import contextlib
import math
import os
import resource
import time

import torch

from benchmarks import harness
from benchmarks.train_step import (
    STAGES,
    Variant,
    add_resident,
    add_throughput,
    minilora_stage,
    model_flops_per_token,
    release,
)

START = time.monotonic()
CARDS_GB = {"80 GB (H100)": 81559 * 2**20, "141 GB (H200)": 143771 * 2**20}  # what nvidia-smi reports


def before_this_change(model):
    """The offload store, MLP and attention order minilora used before (the same-call baseline)."""
    from benchmarks.long_context_parts import PerTensorPinnedStore
    from minilora import ops
    from minilora.models.offload_store import using_store
    from minilora.models.tiled import DEFAULT_TILE_TOKENS, set_tile_tokens
    store = PerTensorPinnedStore() if torch.cuda.is_available() else None  # (a CPU smoke run keeps today's)

    @contextlib.contextmanager
    def context():
        set_tile_tokens(model, None)
        previous = ops.sdpa_preference()
        ops.prefer_sdpa("pytorch")
        try:
            with using_store(store) if store is not None else contextlib.nullcontext():
                yield
        finally:
            set_tile_tokens(model, DEFAULT_TILE_TOKENS)
            ops.prefer_sdpa(previous)
    return context


def predicted_ms(points: list[tuple[int, float]], seq: int) -> float | None:
    """Step time at `seq` from the two longest measured (tokens, ms): t = a T + b T² (attention grows as T²)."""
    pts = sorted(points)[-2:]
    if len(pts) < 2:
        return None
    (t1, m1), (t2, m2) = pts
    b = (m2 / t2 - m1 / t1) / (t2 - t1)
    a = m1 / t1 - b * t1
    return max(0.0, a * seq + b * seq * seq)


def offload_stats() -> dict:
    from minilora.models import offload_store
    return offload_store.default_store().stats() if offload_store._STORE is not None else {}


def host_available_gib() -> float | None:
    available = host_bytes_available()
    return None if available is None else available / harness.GiB


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
    if device == "cuda" and args.io:
        from benchmarks.long_context_parts import offload_io
        offload_io(res)
    if device == "cuda" and args.attention:
        from benchmarks.long_context_parts import attention_backends
        from minilora import ops
        if attention_backends(res):
            ops.prefer_sdpa("cudnn-first")
            res.log("cuDNN-first attention agreed with SDPA's order and was faster: minilora uses it from here on")
        res.extra["minilora_attention"] = ops.sdpa_preference()
    for s in stages:
        steps[STAGES[s]] = minilora_stage(config, s, 1, first, device, dtype)
    if args.baseline:
        main = steps[STAGES[max(stages)]]
        name = STAGES[max(stages)] + " before (per-tensor pinned, untiled MLP, SDPA order)"
        steps[name] = Variant(name, main, context=before_this_change(main.model))
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
            add_resident(row, step.resident_bytes, device)
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
    longs = [int(n) for n in str(args.long).split(",") if int(n)] if args.long else []
    name = STAGES[max(stages)]
    if longs:
        step = steps[name]
        for other in steps.values():
            if other is not step:  # the long steps need the card (and host) to themselves
                release(other)  # (a Variant shares the Step's model: only its own references go)
    for i, seq_long in enumerate(longs):
        points = [(r["seq"], r["median_ms"]) for r in res.rows if r["impl"] == name and r["reps"]]
        guess = predicted_ms(points, seq_long)
        left_ms = (args.deadline_s - (time.monotonic() - START)) * 1e3 if args.deadline_s else None
        note = ""
        if guess is not None and left_ms is not None and guess > 0.92 * left_ms:
            if i < len(longs) - 1:
                res.log(f"S{seq_long}: predicted {guess / 1e3:.0f} s, {left_ms / 1e3:.0f} s left: skipped")
                continue
            fitted = max((t for t in range(16384, seq_long, 16384) if predicted_ms(points, t) <= 0.92 * left_ms),
                         default=None)
            if fitted is None:
                res.log(f"S{seq_long}: predicted {guess / 1e3:.0f} s, {left_ms / 1e3:.0f} s left: no length fits")
                continue
            note = (f"asked for {seq_long} tokens, predicted {guess / 1e3:.0f} s with {left_ms / 1e3:.0f} s left in "
                    f"the call: ran the longest multiple of 16384 predicted to fit")
            res.log(note)
            seq_long = fitted
        peaks = sorted((r["seq"], r["peak_gib"]) for r in res.rows if r["impl"] == name and r["reps"]
                       and r.get("peak_gib") is not None)[-2:]
        if device == "cuda" and len(peaks) == 2 and i == len(longs) - 1:
            (t1, p1), (t2, p2) = peaks
            room = torch.cuda.get_device_properties(0).total_memory / harness.GiB * 0.97
            if p2 + (p2 - p1) / (t2 - t1) * (seq_long - t2) > room:
                fitted = int(t2 + (room - p2) / ((p2 - p1) / (t2 - t1))) // 16384 * 16384
                note = (note + "; " if note else "") + (f"{seq_long} tokens predicted past the card's memory: ran "
                                                        f"{fitted}, the longest multiple of 16384 predicted to fit")
                res.log(note)
                seq_long = min(seq_long, fitted)
        step.set_batch(1, seq_long)
        clock = harness.default_clock(device)
        host_before = host_available_gib()
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
            store = offload_stats()
            row = res.add(f"B1 S{seq_long} single step", name, [clock.elapsed_ms(start, end)], peak=peak,
                          seq=seq_long, loss=loss, loss_finite=loss is not None and math.isfinite(loss),
                          host_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                          host_available_gib_before=host_before, offload_store=store,
                          predicted_ms=guess, note=(note + "; " if note else "") +
                          "one step, timed once; peak = resident + the step's own peak; host_peak_rss_gib includes "
                          "the pinned offload pool")
            add_throughput(row, seq_long, flops, None)
        except Exception as err:  # out of memory is a result here
            res.add(f"B1 S{seq_long} single step", name, [], seq=seq_long, error=harness._error_text(err),
                    offload_store=offload_stats(), host_available_gib_before=host_before)
            if device == "cuda":
                torch.cuda.empty_cache()
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
            per_token = derived[name]["bytes_per_token"]
            longest = max((r for r in res.rows if r["impl"] == name and r["reps"] and "single" in r["name"]
                           and r.get("peak_gib") is not None), key=lambda r: r["seq"], default=None)
            if longest is not None:  # the slope out to the longest step: what the projections should use
                per_token = (longest["peak_gib"] - peak0) * harness.GiB / (longest["seq"] - seq0)
                derived[name]["bytes_per_token_to_longest"] = per_token
                if derived.get(hf, {}).get("bytes_per_token"):
                    derived[name]["hf_bytes_per_token_ratio_to_longest"] = derived[hf]["bytes_per_token"] / per_token
            derived[name]["projected_max_tokens_by_card"] = {
                card: int(seq0 + (cap - peak0 * harness.GiB) / per_token) for card, cap in CARDS_GB.items()}
        derived["card_total_gib"] = total / harness.GiB
    res.extra["derived"] = derived
    res.extra["config"] = {"model": label, "batch": 1, "lengths": lengths, "long": args.long}
    from benchmarks.long_context_parts import env_summary
    res.extra["environment"] = env_summary()
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
    return _finish(fig, data, "", png_path, show)


def plot_savings(json_path: str, png_path: str | None = None, show: bool = False):
    """Against context length: minilora's speed-up over HF (left, Unsloth's 2x as a line) and the GPU memory it saves
    (right, Unsloth's 70% as a line), from one record's rows at the lengths both stacks ran."""
    import matplotlib
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = harness.load_results(json_path)
    rows = [r for r in data["rows"] if r.get("seq") and r["reps"] and "single" not in r["name"]]
    hf = {r["seq"]: r for r in rows if r["impl"].startswith("HF")}
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for impl in dict.fromkeys(r["impl"] for r in rows if not r["impl"].startswith("HF")):
        pts = sorted((r["seq"], hf[r["seq"]]["median_ms"] / r["median_ms"],
                      100 * (1 - r["peak_gib"] / hf[r["seq"]]["peak_gib"])) for r in rows
                     if r["impl"] == impl and r["seq"] in hf and r.get("peak_gib") and hf[r["seq"]].get("peak_gib"))
        if pts:
            ax_s.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=impl)
            ax_m.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=impl)
    ax_s.axhline(2.0, color="grey", ls="--", label="Unsloth's claim: 2x")
    ax_m.axhline(70.0, color="grey", ls="--", label="Unsloth's claim: 70% less")
    for ax, label in ((ax_s, "speed-up over HF+PEFT+bnb (x)"), (ax_m, "GPU memory saved vs HF+PEFT+bnb (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens, batch 1)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    ax_s.set_ylim(bottom=0)
    ax_m.set_ylim(0, 100)
    return _finish(fig, data, " QLoRA", png_path, show)


def _finish(fig, data, what: str, png_path: str | None, show: bool):
    """Title a figure with the record's model, card and date; save and/or show it."""
    import matplotlib.pyplot as plt
    fig.suptitle(f"{data['config']['model'] if 'config' in data else ''}{what} — {data['card']}, {data['date'][:10]}",
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
    ap.add_argument("--long", default="0", help="also one minilora step at each of these many tokens, comma-separated "
                    "(0: none); the last shrinks to what the deadline leaves time for")
    ap.add_argument("--deadline-s", type=float, default=0, help="seconds after start by which the long steps must end")
    ap.add_argument("--baseline", action="store_true", help="also time the offload store, MLP and attention order "
                    "of before the chunk pool (same model)")
    ap.add_argument("--io", action="store_true", help="first measure the offload homes' GB/s (pinned, disk)")
    ap.add_argument("--attention", action="store_true", help="first time SDPA cuDNN-first against SDPA's order")
    ap.add_argument("--no-anchor", action="store_true", help="leave out the HF+PEFT+bitsandbytes stack")
    ap.add_argument("--name", default="ctx-mem-8b",
                    help="file name prefix (a second call, e.g. only the long step, can use long-context-8b)")
    ap.add_argument("--anchor-cache", help="folder for the anchor's random checkpoint (reused when present)")
    harness.add_run_args(ap, reps=1, warmup=1, plot=True)
    ap.add_argument("--plot-savings", help="draw speed-up and memory saved against length from a record, then exit")
    args = ap.parse_args(argv)
    if args.plot_savings:
        return harness.draw_recorded(args.plot_savings, plot_savings)
    if args.plot:
        return harness.draw_recorded(args.plot, plot)
    if args.smoke:
        args.lengths, args.long, args.warmup = "16,32", args.long if args.long != "0" else "64", 0
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

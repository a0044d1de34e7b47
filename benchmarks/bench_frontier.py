"""The speed–memory frontier: minilora's QLoRA step (+ triton + fused-ce) at a sweep of memory budgets, from every
layer offloaded to no recompute, each budget planned by `minilora.memory.plan` — beside the HF + PEFT +
bitsandbytes anchor with checkpointing on and off, all from one process and timed in alternation (harness).

Per minilora row: the budget, the plan (layers kept / recomputed / offloaded), the predicted peak and the measured
one (resident + the step's peak above it: what `torch.cuda.max_memory_allocated` reports in a process holding only
that stack), tokens/s, and the ratios to both HF points. Rows with role "planner@..." are the planner given the
targets' budgets (HF-on's measured peak, a share of HF-on's or HF-off's); "+ adamw-8bit" rows repeat two points
with 8-bit AdamW states. The "checks" hold the bytes one decoder layer keeps, computed and measured. The planner's
models share one model, optimizer and batch (`train_step.Variant`), so rows differ only in the plan.

    python -m benchmarks.bench_frontier --shape 8b --out DIR [--ablation] [--profile]   # GPU
    python -m benchmarks.bench_frontier --smoke --out DIR --ablation --profile           # CPU: the code path only

--ablation also records the "+ triton" stage with each fast path switched off alone (ops.without) into
ablation-<card>-<date>.json; --profile buckets one step at the no-recompute point (matmul, attention, dequant,
elementwise, copies, idle) into the frontier file's "profile".
"""
from __future__ import annotations

import argparse

import torch

from benchmarks import harness
from benchmarks.shapes import SHAPES, shape_of
from benchmarks.train_step import (
    Step,
    Variant,
    add_resident,
    add_throughput,
    build_stage_model,
    built,
    model_flops_per_token,
)
from minilora import ops
from minilora.memory import SavedTensorMeter
from minilora.memory.plan import (
    CheckpointPlanner,
    MemoryBudgetError,
    _modes,
    head_bytes,
    layer_bytes,
    predict_peak,
    static_bytes,
)

GiB = harness.GiB
# the targets of the frontier (a share of an HF point's peak memory, and the speed-up wanted there)
TARGETS = {"8b": [("planner@HF-on", "on", 1.00, "on", 2.1), ("fast end", "off", 0.45, "on", 2.8),
                  ("lean end", "on", 0.50, "on", 1.9)],
           "1b": [("planner@50% HF-on", "on", 0.50, "on", 3.0), ("planner@15% HF-on", "on", 0.15, "on", 2.4)]}


def layer_keep_check(model, batch: int, seq: int, device: str, dtype) -> dict:
    """Bytes one decoder layer saves for backward on this path: computed (layer_bytes) and counted by the meter."""
    config = model.config
    x = torch.randn(batch, seq, config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    cos, sin = model.model.rotary_emb(torch.arange(seq, device=device).expand(batch, seq), dtype)
    fast = ops.fast_lora_on(x)
    with SavedTensorMeter(model) as meter:
        model.model.layers[0](x, cos, sin, None, True, None)
    tables = cos.untyped_storage().nbytes() + sin.untyped_storage().nbytes()
    adapter = next(p.dtype for p in model.parameters() if p.requires_grad)
    predicted = layer_bytes(config, batch * seq, dtype=dtype, fast=fast, r=16, adapter_dtype=adapter).keep
    return {"fast_path": fast, "predicted_bytes": predicted, "measured_bytes": meter.bytes - tables,
            "ratio": predicted / max(1, meter.bytes - tables)}


def sweep_budgets(planner: CheckpointPlanner, batch: int, seq: int, n: int) -> list:
    """n budgets from the leanest plan's predicted peak to the no-recompute plan's, evenly spaced."""
    plan = planner.prepare(batch, seq)
    L, layer, static = len(plan.modes), plan.layer, plan.static
    head = head_bytes(planner.model.config, batch * seq, batch, dtype=planner.model.model.embed_tokens.weight.dtype)
    tc = batch * seq * planner.model.config.hidden_size * planner.model.model.embed_tokens.weight.element_size()
    low = predict_peak(static, layer, _modes(L, 0, L if layer.offload == 0 else 0), head, tc)
    high = predict_peak(static, layer, _modes(L, L, 0), head, tc)
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def run(args) -> tuple[harness.Results, harness.Results | None]:
    device, name, config, batch, seq, dtype = shape_of(args)
    label = f"{name} B{batch} S{seq}"
    res = harness.Results(f"frontier-{args.shape}", device, notes=(
        f"speed-memory frontier, {name} shape, random weights, QLoRA r16 on 7 projections, B{batch} S{seq}; "
        f"minilora (+ triton + fused-ce) at a sweep of memory budgets planned by minilora.memory.plan, beside HF+PEFT"
        f"+bitsandbytes with checkpointing on and off (one model); every stack in one process, timed in "
        f"alternation: warm-up {args.warmup} + {args.rounds} rotated rounds x {args.reps} steps. peak_gib = resident "
        f"+ the step's peak above it; predicted_peak_gib = the planner's prediction of the same."))
    res.autosave(args.out, harness.result_stem(f"frontier-{args.shape}", device, args.smoke))
    flops = model_flops_per_token(config)
    res.extra["config"] = {"model": name, "batch": batch, "seq": seq, "n_params": flops / 6}

    # --- the anchor, on and off, from one model; its peaks decide the targets' budgets -----------------------------
    hf = []
    if not args.no_anchor:
        from benchmarks.anchor_hf import anchor_steps, default_cache_dir
        cache = None if args.smoke else (args.anchor_cache or default_cache_dir(args.shape))
        hf = anchor_steps(config, batch, seq, device, dtype=dtype, cache_dir=cache, log=res.log)
    hf_peak = {}
    for step, key in zip(hf, ("on", "off")):
        step_peak = harness.peak_gib(step, device)
        hf_peak[key] = None if step_peak is None else step_peak + step.resident_bytes / GiB
    res.log(f"HF peaks (GiB, measured before the sweep): {hf_peak}")

    # --- minilora: one model, one optimizer; a Variant per plan ------------------------------------------------------
    def make():
        model = build_stage_model(config, 3, device, dtype)
        return Step("minilora", model, device, batch, seq, kernels="triton" if device == "cuda" else "auto",
                    return_logits=False)
    base = built(make, device)
    model = base.model
    res.extra["checks"] = {"layer_keep_bytes": layer_keep_check(model, batch, seq, device, dtype)}
    res.log(f"layer keep bytes: {res.extra['checks']['layer_keep_bytes']}")
    planner = CheckpointPlanner(model, 1.0, optim="adamw")
    model.gradient_checkpointing = planner
    budgets = [("sweep", b) for b in sweep_budgets(planner, batch, seq, args.points)]
    for role, share_of, share, *_ in TARGETS[args.shape]:
        if hf_peak.get(share_of):
            budgets.append((role, share * hf_peak[share_of] * GiB))
    plans, steps, extras = {}, {}, {}
    for role, budget in budgets:
        planner.memory_budget = budget / GiB
        try:
            plan = planner.prepare(batch, seq)
        except MemoryBudgetError as err:
            res.log(f"{role}: {err}")
            res.extra.setdefault("refused", []).append({"role": role, "budget_gib": budget / GiB,
                                                       "smallest_gib": err.smallest / GiB})
            continue
        c = plan.counts()
        impl = f"minilora keep {c['keep']} / recompute {c['recompute']} / offload {c['offload']}"
        info = {"stack": "minilora", "optim": "adamw", "role": role, "budget_gib": budget / GiB, "plan": c,
                "predicted_peak_gib": plan.predicted_peak / GiB}
        if impl in plans:  # the same plan for another budget: one row, every role it serves
            extras[impl].setdefault("also", []).append({"role": role, "budget_gib": budget / GiB})
            continue
        plans[impl] = plan
        modes = plan.model_modes
        steps[impl] = Variant(impl, base, lambda s, m=modes: setattr(s.model, "gradient_checkpointing", m))
        extras[impl] = info
    # 8-bit AdamW: the leanest and the fastest plan again, the moments in 8 bits (the ladder's last stage)
    from minilora.train.adamw8bit import AdamW8bit
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt8 = AdamW8bit(trainable, lr=1e-4)
    fp32_state = sum(p.numel() * p.element_size() * 2 for p in trainable)
    keyed = sorted(plans.items(), key=lambda kv: kv[1].predicted_peak)
    eight = [keyed[0], keyed[-1]] if len(keyed) > 1 else keyed
    static8 = static_bytes(model, batch, seq, "adamw_8bit")[0]  # the plan's static bytes with 8-bit moments
    for impl, plan in eight:
        impl8 = impl + " + adamw-8bit"
        modes = plan.model_modes
        steps[impl8] = Variant(impl8, base, lambda s, m=modes: setattr(s.model, "gradient_checkpointing", m),
                               optimizer=opt8)
        extras[impl8] = {**extras[impl], "optim": "adamw_8bit", "role": extras[impl]["role"] + " + adamw-8bit",
                         "predicted_peak_gib": predict_peak(static8, plan.layer, plan.modes,
                                                            head_bytes(config, batch * seq, batch, dtype=dtype),
                                                            batch * seq * config.hidden_size * dtype.itemsize) / GiB}

    impls = {s.name: s for s in hf}
    impls.update(steps)
    rows = res.compare(label, impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                       extras={**extras, **{s.name: {"stack": "HF+PEFT+bnb", "checkpointing": k}
                                            for s, k in zip(hf, ("on", "off"))}})
    state8 = sum(t.numel() * t.element_size() for s in opt8.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor) and t.dim() > 0)
    opt8_ready = state8 > 0
    by_name = {r["impl"]: r for r in rows}
    for row in rows:
        step = impls[row["impl"]]
        resident = step.resident_bytes
        if row["impl"].endswith("adamw-8bit") and opt8_ready:
            resident = base.resident_bytes - fp32_state + state8
        add_resident(row, resident, device)
        add_throughput(row, step.tokens, flops, None)
        if row.get("predicted_peak_gib") and row["peak_gib"]:
            row["predicted_vs_measured"] = row["predicted_peak_gib"] / row["peak_gib"]
    hf_rows = {k: by_name.get(s.name) for s, k in zip(hf, ("on", "off"))}
    for row in rows:
        for k, hr in hf_rows.items():
            if hr and hr.get("tok_s") and row.get("tok_s"):
                row[f"x_hf_{k}"] = row["tok_s"] / hr["tok_s"]
                row[f"mem_vs_hf_{k}"] = row["peak_gib"] / hr["peak_gib"] if row["peak_gib"] and hr["peak_gib"] \
                    else None
    res.extra["targets"] = targets(args.shape, rows, hf_rows)
    if args.profile:
        res.extra["profile"] = profile_point(base, plans, device)
    ablation = run_ablation(args, base, label, device) if args.ablation else None
    return res, ablation


def targets(shape: str, rows: list, hf_rows: dict) -> list:
    """Each target: the fastest minilora row at or under the memory it allows, its speed-up, met or not."""
    out = []
    for role, share_of, share, speed_of, wanted in TARGETS[shape]:
        ref_mem, ref_speed = hf_rows.get(share_of), hf_rows.get(speed_of)
        if not (ref_mem and ref_mem.get("peak_gib") and ref_speed and ref_speed.get("tok_s")):
            out.append({"target": role, "met": None, "why": "HF point not measured"})
            continue
        limit = share * ref_mem["peak_gib"]
        fitting = [r for r in rows if r.get("stack") == "minilora" and r.get("tok_s") and r["peak_gib"] is not None
                   and r["peak_gib"] <= limit]
        best = max(fitting, key=lambda r: r["tok_s"], default=None)
        speedup = best["tok_s"] / ref_speed["tok_s"] if best else None
        entry = {"target": role, "memory_limit_gib": limit, "limit": f"{share:.0%} of HF-{share_of}'s peak",
                 "wanted_x_hf_" + speed_of: wanted, "best_impl": best["impl"] if best else None,
                 "x_hf_" + speed_of: speedup, "peak_gib": best["peak_gib"] if best else None,
                 "met": bool(speedup and speedup >= wanted)}
        if shape == "8b" and role == "fast end" and best and (hf_rows.get("off") or {}).get("tok_s"):
            entry["x_hf_off"] = best["tok_s"] / hf_rows["off"]["tok_s"]
            entry["wanted_x_hf_off"] = 2.0
            entry["met"] = entry["met"] and entry["x_hf_off"] >= 2.0
        out.append(entry)
    return out


def profile_point(base: Step, plans: dict, device: str) -> dict:
    """One step at the fastest plan (no recompute where it fits), its GPU kernels bucketed."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.profile_step import breakdown
    impl, plan = max(plans.items(), key=lambda kv: kv[1].counts()["keep"])
    base.model.gradient_checkpointing = plan.model_modes
    base()
    if device != "cuda":
        return {"impl": impl, "note": "no CUDA device: nothing to profile"}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        base()
        torch.cuda.synchronize()
    return {"impl": impl, **breakdown(prof)}


def run_ablation(args, base: Step, label: str, device: str) -> harness.Results:
    """The ladder's "+ triton" stage (full recompute, unfused loss) with each fast path off alone, in one rotation."""
    res = harness.Results("ablation", device, notes=(
        f"the '+ triton' stage (QLoRA r16, full recompute, logits materialized), {label}, with each fast path of "
        f"minilora.ops switched off alone (ops.without): its PyTorch route runs instead. 'all six off' keeps only "
        f"the cross-entropy kernel. One model, optimizer and batch; warm-up {args.warmup} + {args.rounds} rotated "
        f"rounds x {args.ablation_reps} steps."))
    res.autosave(args.out, harness.result_stem("ablation", device, args.smoke))

    def recompute(step):
        step.model.gradient_checkpointing = True
    variants = {"+ triton (all on)": Variant("+ triton (all on)", base, recompute, return_logits=True)}
    for path in ops.FAST_PATHS:
        variants[f"without {path}"] = Variant(f"without {path}", base, recompute, return_logits=True,
                                              context=lambda p=path: ops.without(p))
    variants["all six off"] = Variant("all six off", base, recompute, return_logits=True,
                                      context=lambda: ops.without(*ops.FAST_PATHS))
    rows = res.compare(label, variants, rounds=args.rounds, reps=args.ablation_reps, warmup=args.warmup)
    on = rows[0]
    for row in rows:
        add_throughput(row, base.tokens, model_flops_per_token(base.model.config), None)
        if on.get("median_ms") and row.get("median_ms"):
            row["slowdown_vs_all_on"] = row["median_ms"] / on["median_ms"]
            row["ms_bought"] = row["median_ms"] - on["median_ms"]
    return res


def plot(json_path: str, png_path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = harness.load_results(json_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    mini = sorted((r for r in data["rows"] if r.get("stack") == "minilora" and r.get("tok_s") and r["peak_gib"]
                   and r.get("optim") == "adamw"), key=lambda r: r["peak_gib"])
    eight = [r for r in data["rows"] if r.get("optim") == "adamw_8bit" and r.get("tok_s") and r["peak_gib"]]
    hf = [r for r in data["rows"] if r.get("stack") == "HF+PEFT+bnb" and r.get("tok_s") and r["peak_gib"]]
    if mini:
        ax.plot([r["peak_gib"] for r in mini], [r["tok_s"] for r in mini], "o-", label="minilora (planned budgets)")
        ax.plot([r["predicted_peak_gib"] for r in mini], [r["tok_s"] for r in mini], "x", color="gray",
                label="minilora, predicted peak")
    if eight:
        ax.plot([r["peak_gib"] for r in eight], [r["tok_s"] for r in eight], "s", label="+ adamw-8bit")
    for r in hf:
        ax.plot(r["peak_gib"], r["tok_s"], "D", label=f"HF+PEFT+bnb, checkpointing {r['checkpointing']}")
    ax.set_xlabel("peak GPU memory (GiB)")
    ax.set_ylabel("tokens / s")
    ax.set_title(f"{data['rows'][0]['name'] if data['rows'] else ''} — {data['card']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--points", type=int, default=5, help="budgets in the sweep, leanest to no recompute")
    ap.add_argument("--anchor-cache", help="folder for the anchor's random checkpoint (reused when present)")
    ap.add_argument("--no-anchor", action="store_true", help="leave the HF stacks out")
    ap.add_argument("--ablation", action="store_true", help="also record the '+ triton' ablation")
    ap.add_argument("--ablation-reps", type=int, default=1, help="timed steps per variant per round")
    ap.add_argument("--profile", action="store_true", help="bucket one step at the no-recompute point")
    harness.add_run_args(ap, reps=2, warmup=1, plot=True)
    args = ap.parse_args(argv)
    if args.plot:
        return harness.draw_recorded(args.plot, plot)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("the Llama shapes need a CUDA GPU; --smoke runs a tiny model on the CPU")
    res, ablation = run(args)
    stem = harness.result_stem(f"frontier-{args.shape}", res.device, args.smoke)
    harness.finish(res, args.out, stem, plot=plot)
    if ablation is not None:
        harness.finish(ablation, args.out, harness.result_stem("ablation", res.device, args.smoke))
    print("\ntargets:")
    for t in res.extra.get("targets", []):
        print(f"  {t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

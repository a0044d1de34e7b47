"""Real instruction lengths: real (non-padding) tokens per second, HF + PEFT + bitsandbytes with the usual dynamic
padding beside minilora padded the same way and minilora packed, at the Llama-3.2-1B and Llama-3-8B shapes.

Where the lengths come from. Wang et al. 2023, "How Far Can Camels Go? Exploring the State of Instruction Tuning on
Open Resources" (arXiv:2306.04751), Table 1, reports per dataset the mean prompt and completion length in Llama
tokens. For GPT4-Alpaca (52,002 single-turn examples): prompt 28.0, completion 161.8 tokens. An example here is the
Alpaca prompt template (~40 tokens) + prompt + completion: mean 230 tokens. The paper gives means only, so the shape
is an assumption, stated here: log-normal with sigma = 0.7 in log space (right-skewed: 20,000 draws give a median of
179 tokens, a 90th percentile of 444 and a 99th of 926), clipped to [8, 2048]. How much padding costs depends on that
spread: the recorded JSON keeps every length drawn, so another spread can be put beside it.
A cross-check of the mean from a second source: the alpaca-gpt4 dataset card (huggingface.co/datasets/vicgalle/
alpaca-gpt4) gives 88,566,301 bytes for 52,002 rows of four string columns, the fourth (`text`) being the other three
inside the Alpaca template (205 characters with an input, 140 without; ~40% of Alpaca's examples have one). That
leaves (1,703 − 16 offset bytes − 166) / 2 ≈ 761 characters of instruction + input + output per example: ≈ 190 Llama
tokens at ~4 characters per English token, beside Table 1's 28.0 + 161.8 = 189.8.

What each stack does per optimizer step (the same examples per step for the padded stacks):
- HF + PEFT + bnb, the anchor recipe of benchmarks/anchor_hf.py: random batches of M examples, padded to the
  batch's longest (transformers' usual collator), attention_mask (B, S), labels -100 on padding and prompt;
- minilora padded: the same batches, NF4 + LoRA r16 + Triton kernels + fused CE, recompute checkpointing;
- minilora packed: the same pool packed best-fit decreasing into rows of 2048 (`minilora.train.packing`), R rows
  per step (R × 2048 ≈ M × 230 tokens), segment_ids and compiled FlexAttention.
Real tokens/s = the real tokens of the timed steps / their summed time (every step a different batch).

Also an attention-only comparison at the 8B attention shape (B2, 2048 tokens of packed rows, fwd + bwd): compiled
FlexAttention (the chosen path) beside every example alone through SDPA (the reference) and plain causal SDPA over
the whole row (flash; not exact for packed rows: the floor a document mask cannot beat).

    python -m benchmarks.bench_packing --shapes 1b,8b --out DIR     # GPU
    python -m benchmarks.bench_packing --smoke --out DIR            # tiny model on a CPU: the code path only
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from benchmarks import harness
from benchmarks.train_step import allocated, optimizer_step
from minilora.train.data import IGNORE_INDEX, Example, collate
from minilora.train.packing import collate_packed, pack_examples, real_tokens

SOURCE = {
    "paper": "Wang et al. 2023, How Far Can Camels Go? Exploring the State of Instruction Tuning on Open Resources, "
             "arXiv:2306.04751, Table 1 (mean lengths in Llama tokens)",
    "dataset": "GPT4-Alpaca, 52,002 single-turn examples",
    "mean_prompt_tokens": 28.0, "mean_completion_tokens": 161.8, "template_tokens": 40,
    "shape_assumed": "log-normal, sigma 0.7 (log space), mean matched, clipped to [8, 2048]",
    "cross_check": "alpaca-gpt4 dataset card: 88,566,301 bytes / 52,002 rows -> ~761 characters of instruction + "
                   "input + output per example, ~190 tokens at ~4 characters per token (Table 1: 189.8)",
}
SIGMA = 0.7
# catalogue name, packed rows per step, examples per padded step (R × 2048 ≈ M × 230)
SHAPES = {"1b": ("llama-3.2-1b", 4, 36), "8b": ("llama-3-8b", 2, 18)}


def draw_lengths(n: int, seed: int, max_len: int, mean: float | None = None) -> list[int]:
    mean = mean or SOURCE["mean_prompt_tokens"] + SOURCE["mean_completion_tokens"] + SOURCE["template_tokens"]
    mu = math.log(mean) - SIGMA ** 2 / 2  # a log-normal's mean is exp(mu + sigma^2 / 2)
    g = torch.Generator().manual_seed(seed)
    draws = torch.exp(mu + SIGMA * torch.randn(n, generator=g, dtype=torch.float64))
    return [int(min(max(round(x), 8), max_len)) for x in draws.tolist()]


def make_examples(lengths: list[int], vocab: int, seed: int) -> list[Example]:
    """Random tokens; the first ~20% of each example (template + prompt) carries no loss, as in response-only."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        prompt = max(1, n // 5)
        out.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


class BatchStep:
    """One optimizer step per call over the next batch of a fixed list; remembers each call's real tokens."""

    def __init__(self, name, model, batches, forward, device, kernels="triton"):
        self.name, self.model, self.batches, self.forward, self.kernels = name, model, batches, forward, kernels
        self.batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        self.real = [real_tokens(b) for b in batches]
        self.shape_tokens = [b["input_ids"].numel() for b in batches]
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.calls: list[int] = []  # index of the batch each call used
        self.loss = None

    def __call__(self):
        i = len(self.calls) % len(self.batches)
        self.calls.append(i)
        self.loss = optimizer_step(self.forward, self.batches[i], self.opt, self.kernels)


def hf_padded(model):
    def forward(b):
        labels = b["labels"]
        return model(input_ids=b["input_ids"], attention_mask=b.get("attention_mask"), labels=labels).loss
    return forward


def minilora_forward(model):
    def forward(b):
        return model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
                     position_ids=b.get("position_ids"), segment_ids=b.get("segment_ids"), return_logits=False).loss
    return forward


def run_shape(res: harness.Results, shape: str, args, device: str, dtype) -> list[dict]:
    from benchmarks.train_step import build_stage_model
    if args.smoke:
        from benchmarks.shapes import smoke_config
        config, name, rows_per_step, per_step, max_len = smoke_config(), "tiny (smoke)", 2, 6, 64
    else:
        from minilora.models.registry import catalogue_config
        name, rows_per_step, per_step = SHAPES[shape]
        config, max_len = catalogue_config(name), 2048
    n_calls = args.warmup + args.rounds * args.reps + 1  # warm-up, timed, one more for the peak
    pool = make_examples(draw_lengths(per_step * n_calls * 3, seed=1, max_len=max_len,
                                      mean=(max_len / 9) if args.smoke else None), config.vocab_size, seed=2)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(3)).tolist()
    padded = [collate([pool[i] for i in order[k * per_step:(k + 1) * per_step]], 0) for k in range(n_calls)]
    rows = pack_examples([pool[i] for i in order], max_len)
    row_order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(4)).tolist()
    packed = [collate_packed([rows[j] for j in row_order[k * rows_per_step:(k + 1) * rows_per_step]], 0,
                             pad_to=max_len) for k in range(n_calls)]
    fill = sum(len(e) for r in rows for e in r) / (len(rows) * max_len)
    res.extra.setdefault("lengths", {})[name] = {"drawn": [len(e) for e in pool], "packed_row_fill": fill}
    res.log(f"{name}: {len(pool)} examples, mean {statistics.mean(len(e) for e in pool):.0f} tokens; padded steps of "
            f"{per_step} examples; {len(rows)} packed rows of {max_len} ({fill:.1%} full), {rows_per_step} per step")

    steps, resident = {}, {}
    before = allocated(device)
    model = build_stage_model(config, 3, device, dtype)
    resident["minilora"] = allocated(device) - before
    steps["minilora padded"] = BatchStep("minilora padded", model, padded, minilora_forward(model), device)
    steps["minilora packed"] = BatchStep("minilora packed", model, packed, minilora_forward(model), device)
    if not args.no_anchor:
        from benchmarks.anchor_hf import build_anchor_model, default_cache_dir
        before = allocated(device)
        hf = build_anchor_model(config, max_len, device, dtype=dtype, log=res.log,
                                cache_dir=None if args.smoke else default_cache_dir(shape))
        resident["hf"] = allocated(device) - before
        steps["HF+PEFT+bnb padded"] = BatchStep("HF+PEFT+bnb padded", hf, padded, hf_padded(hf), device,
                                                kernels="reference")
    clock = harness.default_clock(device)
    timing = harness.time_rotated(steps, rounds=args.rounds, reps=args.reps, warmup=args.warmup, clock=clock,
                                  log=res.log)
    out = []
    for impl, step in steps.items():
        samples = timing["samples"][impl]
        extras = {"shape": name}
        if impl in timing["errors"]:
            extras["error"] = timing["errors"][impl]
        peak = None
        if samples:
            timed = step.calls[args.warmup:args.warmup + len(samples)]
            real = sum(step.real[i] for i in timed)
            shaped = sum(step.shape_tokens[i] for i in timed)
            seconds = sum(samples) / 1e3
            extras.update(real_tokens=real, processed_tokens=shaped, real_share=real / shaped,
                          real_tok_s=real / seconds, steps_timed=len(samples))
            step_peak = harness.peak_gib(step, device)
            if step_peak is not None:
                base = resident["hf" if impl.startswith("HF") else "minilora"]
                peak = step_peak + base / harness.GiB
                extras["step_peak_gib"], extras["resident_gib"] = step_peak, base / harness.GiB
            loss = float(step.loss) if step.loss is not None else None
            extras["loss"] = loss if loss is not None and math.isfinite(loss) else None
        out.append(res.add(f"{name} real lengths", impl, samples, peak, **extras))
    hf_row = next((r for r in out if r["impl"].startswith("HF") and r.get("real_tok_s")), None)
    for r in out:
        if hf_row and r.get("real_tok_s"):
            r["x_hf_padded"] = r["real_tok_s"] / hf_row["real_tok_s"]
    for step in steps.values():
        step.model = step.opt = step.batches = step.forward = None
    del model
    if not args.no_anchor:
        del hf
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def attention_only(res: harness.Results, args, device: str) -> None:
    """Packed attention alone (fwd + bwd) at the 8B attention shape: flex vs per-example SDPA vs causal flash."""
    import torch.nn.functional as F

    from minilora.kernels.segment_attention import (
        PackedSegments,
        segment_attention_flex,
        segment_attention_reference,
        segment_runs,
    )
    B, nh, nkv, hd, T = (2, 4, 2, 16, 64) if args.smoke else (2, 32, 8, 128, 2048)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    lengths = draw_lengths(400, seed=5, max_len=T, mean=(T / 9) if args.smoke else None)
    rows = pack_examples([Example([1] * n, [1] * n) for n in lengths], T)[:B]
    seg = collate_packed(rows, 0, pad_to=T)["segment_ids"].to(device)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, nh, T, hd, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(B, nkv, T, hd, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(B, nkv, T, hd, generator=g).to(device, dtype).requires_grad_()
    dy = torch.randn(B, nh, T, hd, generator=g).to(device, dtype)

    def causal(qp, kp):
        return kp <= qp

    def run(fn):
        def call():
            y = fn()
            torch.autograd.grad(y, (q, k, v), dy)
        return call

    def flex():
        segments = PackedSegments(seg, causal)  # the block mask is built inside: per forward, as in the model
        return segment_attention_flex(q, k, v, segments, compiled=not args.smoke)

    impls = {"flex (compiled, document mask)": run(flex),
             "per-example SDPA (reference)": run(lambda: segment_attention_reference(q, k, v,
                                                                                       PackedSegments(seg, causal))),
             "causal SDPA, whole row (not exact)": run(lambda: F.scaled_dot_product_attention(
                 q, k, v, is_causal=True, enable_gqa=True))}
    try:  # FlashAttention's variable-length kernel, where this torch has it (its arguments moved between versions)
        from torch.nn.attention.varlen import varlen_attn
        runs = [(b * T + s, b * T + e) for b, ids in enumerate(seg.tolist()) for s, e in segment_runs(ids)]
        cu = torch.tensor([0] + [e for _, e in runs], dtype=torch.int32, device=device)
        longest = max(e - s for s, e in runs)

        def varlen():
            flat = [x.transpose(1, 2).reshape(B * T, x.shape[1], hd) for x in (q, k, v)]
            fk, fv = (x.repeat_interleave(nh // nkv, dim=1) for x in flat[1:])
            try:
                y = varlen_attn(flat[0], fk, fv, cu, cu, longest, longest, window_size=(-1, 0))
            except TypeError:
                y = varlen_attn(flat[0], fk, fv, cu, cu, longest, longest, is_causal=True)
            return y.reshape(B, T, nh, hd).transpose(1, 2)
        impls["varlen flash (torch.nn.attention.varlen)"] = run(varlen)
    except ImportError:
        res.log("no torch.nn.attention.varlen in this torch: its row is left out")
    n_segments = sum(len(r) for r in rows)
    res.compare(f"attention B{B} T{T} ({n_segments} examples)", impls, rounds=args.rounds, reps=5, warmup=2,
                extras={name: {"examples": n_segments} for name in impls})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b,8b", help="comma-separated: 1b, 8b")
    ap.add_argument("--no-anchor", action="store_true", help="leave the HF + PEFT + bnb stack out")
    ap.add_argument("--no-attention", action="store_true", help="leave the attention-only comparison out")
    harness.add_run_args(ap, reps=1, warmup=1)
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("the Llama shapes need a CUDA GPU; --smoke runs a tiny model on the CPU")
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    res = harness.Results("packing", device, notes=(
        "real instruction lengths (see provenance): real (non-padding) tokens/s of one optimizer step per call, every "
        "call a different batch; HF+PEFT+bnb and minilora padded on the same random batches padded to their longest, "
        "minilora packed on best-fit-decreasing rows of 2048; warm-up then rotated rounds; peak_gib = resident + the "
        "step's own peak (one extra step)."))
    stem = harness.result_stem("packing", device, args.smoke)
    res.autosave(args.out, stem)
    res.extra["provenance"] = SOURCE
    res.extra["config"] = {"shapes": {k: SHAPES[k] for k in args.shapes.split(",")}, "lora": "r16 on 7 projections",
                           "minilora": "stage 3 (NF4 + triton + fused CE), recompute checkpointing"}
    t0 = time.perf_counter()
    if not args.no_attention:
        attention_only(res, args, device)
    for shape in args.shapes.split(","):
        run_shape(res, shape, args, device, dtype)
        res.write(args.out, stem)
    res.log(f"total {time.perf_counter() - t0:.0f} s")
    harness.finish(res, args.out, stem)
    print(f"\n{'shape':22s}{'stack':22s}{'real tok/s':>12s}{'real share':>12s}{'peak GiB':>10s}{'x HF':>8s}")
    for r in res.rows:
        if r.get("real_tok_s"):
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "—"
            x = f"{r['x_hf_padded']:.2f}" if r.get("x_hf_padded") else "—"
            print(f"{r['shape']:22s}{r['impl']:22s}{r['real_tok_s']:>12,.0f}{r['real_share']:>12.1%}{peak:>10s}{x:>8s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""NF4 dequantization of a 14336×4096 weight (Llama-3-8B's MLP) to bf16: minilora's Triton kernel beside
bitsandbytes and the plain-PyTorch reference, plain absmax and double-quantized, with the copy ceiling of the same
bytes — all timed by benchmarks/harness.py in one call (warm-up, rotated rounds, the same number of calls each).

Bytes = packed codes + scales read + bf16 output written; "pct_of_copy" = a device copy of those bytes over the op's
time. minilora runs at its shipped defaults (DEFAULT_TILE, DEFAULT_LOOKUP); --sweep adds a separate comparison of tile
sizes, warp counts and the three ways to look a level up. Checks recorded beside the rows: byte-identical codes and
absmax against bitsandbytes, and the Triton output equal to the reference.

    python -m benchmarks.bench_nf4 --out DIR            # GPU
    python -m benchmarks.bench_nf4 --smoke --out DIR    # small weight on a CPU (Triton interpreter): code path only
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks import harness


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=14336)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--sweep", action="store_true", help="also compare tile sizes, warps and lookups")
    harness.add_run_args(ap, reps=50, warmup=5)
    args = ap.parse_args(argv)
    if args.smoke:
        args.rows, args.cols, args.reps, args.warmup = 128, 256, 2, 1
    elif not torch.cuda.is_available():
        ap.error("needs a CUDA GPU; --smoke runs a small weight on the CPU")
    device = "cpu" if args.smoke else "cuda"
    from minilora.kernels.nf4_dequant import (
        DEFAULT_LOOKUP,
        DEFAULT_TILE,
        LOOKUP_GATHER,
        LOOKUP_PAIR,
        LOOKUP_SELECT,
        dequantize_nf4_triton,
    )
    from minilora.quant import dequantize_nf4_reference, quantize_nf4

    torch.manual_seed(0)
    W = torch.randn(args.rows, args.cols, device=device, dtype=torch.bfloat16)
    n = W.numel()
    res = harness.Results("nf4-dequant", device, notes=(
        f"NF4 dequant {args.rows}x{args.cols} -> bf16, blocksize 64; warm-up {args.warmup}, {args.rounds} rotated "
        f"rounds x {args.reps} calls per implementation; each comparison with a device copy of its bytes."))
    res.autosave(args.out, harness.result_stem("nf4-dequant", device, args.smoke))
    checks = {}
    try:
        import bitsandbytes.functional as bnbF
    except ImportError as err:
        print(f"bitsandbytes not importable ({err}); its rows are left out")
        bnbF = None
    for dq in (False, True):
        tag = "double-quant" if dq else "plain absmax"
        state = quantize_nf4(W, 64, double_quant=dq)
        ref = dequantize_nf4_reference(state, torch.bfloat16)
        out = dequantize_nf4_triton(state, torch.bfloat16)
        checks[f"triton == reference ({tag})"] = bool(torch.equal(out, ref))
        checks[f"max |triton - reference| ({tag})"] = float((out.float() - ref.float()).abs().max())
        nbytes = state.nbytes + n * 2
        impls = {"minilora triton": lambda s=state: dequantize_nf4_triton(s, torch.bfloat16),
                 "torch reference": lambda s=state: dequantize_nf4_reference(s, torch.bfloat16)}
        if bnbF is not None:
            packed, qs = bnbF.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=dq)
            checks[f"codes == bitsandbytes ({tag})"] = bool(torch.equal(state.codes, packed.reshape(-1)))
            if not dq:
                checks["absmax == bitsandbytes"] = bool(torch.equal(state.absmax, qs.absmax))
                checks["triton dequant == bitsandbytes dequant (plain)"] = bool(torch.equal(
                    out, bnbF.dequantize_4bit(packed, qs)))
            impls["bitsandbytes dequantize_4bit"] = lambda p=packed, q=qs: bnbF.dequantize_4bit(p, q)
        tile, warps = DEFAULT_TILE[dq]
        extras = {"minilora triton": {"tile_bytes": tile, "num_warps": warps, "lookup": DEFAULT_LOOKUP}}
        res.compare(f"nf4 dequant ({tag})", impls, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                    nbytes=nbytes, extras={i: {"double_quant": dq, **extras.get(i, {})} for i in impls})
        if args.sweep:
            lookups = {"gather": LOOKUP_GATHER, "pair table": LOOKUP_PAIR, "select": LOOKUP_SELECT}
            tiles = [(1024, 4), (2048, 4)] if args.smoke else [(1024, 4), (2048, 4), (4096, 4), (4096, 8), (8192, 8)]
            sweep = {f"{ln}, {t} B/tile, {w} warps": (lambda s=state, t=t, w=w, lk=lk: dequantize_nf4_triton(
                s, torch.bfloat16, tile_bytes=t, num_warps=w, lookup=lk))
                for (ln, lk), (t, w) in itertools.product(lookups.items(), tiles)}
            res.compare(f"nf4 sweep ({tag})", sweep, rounds=args.rounds, reps=args.reps, warmup=args.warmup,
                        nbytes=nbytes, measure_peak=False)
    res.extra["checks"] = checks
    res.extra["config"] = {"shape": [args.rows, args.cols], "blocksize": 64}
    harness.finish(res, args.out, harness.result_stem("nf4-dequant", device, args.smoke))
    for k, v in checks.items():
        print(f"  check: {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

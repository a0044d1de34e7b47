"""Benchmark: NF4 dequantization of a 14336×4096 weight (Llama-3-8B's MLP) to bf16, on the GPU.

Compared in one run, on one card:
- minilora's Triton kernel (`minilora.kernels.nf4_dequant`), plain absmax and double-quantized, three ways to look
  up a level (gather / pair table / select tree), several tile sizes and warp counts;
- bitsandbytes.functional.dequantize_4bit on the same weight (plain and compress_statistics=True);
- a bf16 copy of the dense weight (read 2 bytes + write 2 bytes a value): the bandwidth ceiling.

Throughput = bytes moved / time, bytes = packed codes + scales read + bf16 output written (the copy: read + write).
Times are medians of triton.testing.do_bench (which clears the L2 cache between runs).

    PYTHONPATH=. python benchmarks/bench_nf4.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch


def _bytes_dequant(state, out_dtype=torch.bfloat16) -> int:
    return state.nbytes + state.numel * torch.empty(0, dtype=out_dtype).element_size()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=14336)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_nf4 needs a CUDA GPU; the recorded results are in benchmarks/results/nf4-*.json")
        return 1
    import triton
    from triton.testing import do_bench

    from minilora.kernels.nf4_dequant import (DEFAULT_LOOKUP, DEFAULT_TILE, LOOKUP_GATHER, LOOKUP_PAIR,
                                              LOOKUP_SELECT, dequantize_nf4_triton)
    from minilora.quant import dequantize_nf4_reference, quantize_nf4

    torch.manual_seed(0)
    W = torch.randn(args.rows, args.cols, device="cuda", dtype=torch.bfloat16)
    n = W.numel()
    results = []

    def record(name, fn, nbytes, **extra):
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        results.append(dict(name=name, ms=ms, bytes=nbytes, tb_per_s=nbytes / ms / 1e9, **extra))
        print(f"{name:66s} {ms * 1e3:8.1f} us  {nbytes / ms / 1e9:6.2f} TB/s")

    # the ceiling: a bf16 copy of the same weight
    dst = torch.empty_like(W)
    record("bf16 copy (read+write)", lambda: dst.copy_(W), 2 * n * 2)

    checks = {}
    for dq in (False, True):
        state = quantize_nf4(W, 64, double_quant=dq)
        tag = "double-quant" if dq else "plain absmax"
        ref = dequantize_nf4_reference(state, torch.bfloat16)
        out = dequantize_nf4_triton(state, torch.bfloat16)
        checks[f"triton == reference ({tag})"] = bool(torch.equal(out, ref)) if not dq else \
            float((out.float() - ref.float()).abs().max())
        for lookup, lname in ((LOOKUP_GATHER, "gather"), (LOOKUP_PAIR, "pair table"), (LOOKUP_SELECT, "select")):
            for tile, warps in ((1024, 4), (2048, 4), (4096, 4), (4096, 8), (8192, 8)):
                fn = (lambda s=state, t=tile, w=warps, lk=lookup:
                      dequantize_nf4_triton(s, torch.bfloat16, tile_bytes=t, num_warps=w, lookup=lk))
                ok = torch.equal(fn(), ref) if not dq else float((fn().float() - ref.float()).abs().max()) < 1e-2
                record(f"minilora triton ({tag}, {lname}, {tile} B/tile, {warps} warps)", fn, _bytes_dequant(state),
                       tile_bytes=tile, num_warps=warps, lookup=lname, double_quant=dq, matches_reference=ok,
                       default=(lookup, (tile, warps)) == (DEFAULT_LOOKUP, DEFAULT_TILE[dq]))
        record(f"torch reference ({tag})", lambda s=state: dequantize_nf4_reference(s, torch.bfloat16),
               _bytes_dequant(state), double_quant=dq)

    bnb_version = None
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnbF
        bnb_version = bnb.__version__
        for dq in (False, True):
            tag = "double-quant" if dq else "plain absmax"
            packed, qs = bnbF.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=dq)
            ours = quantize_nf4(W, 64, double_quant=dq)
            checks[f"bytes == bitsandbytes CUDA ({tag})"] = bool(torch.equal(ours.codes, packed.reshape(-1)))
            if not dq:
                checks["absmax == bitsandbytes CUDA"] = bool(torch.equal(ours.absmax, qs.absmax))
                checks["triton dequant == bitsandbytes dequant (plain)"] = bool(torch.equal(
                    dequantize_nf4_triton(ours, torch.bfloat16), bnbF.dequantize_4bit(packed, qs)))
            nbytes = packed.numel() + (qs.absmax.numel() * qs.absmax.element_size()) + n * 2
            if dq:
                nbytes += qs.state2.absmax.numel() * 4
            record(f"bitsandbytes dequantize_4bit ({tag})", lambda p=packed, q=qs: bnbF.dequantize_4bit(p, q),
                   nbytes, double_quant=dq)
    except ImportError as e:
        print(f"bitsandbytes not available: {e}")

    props = torch.cuda.get_device_properties(0)
    record_ = dict(
        benchmark="nf4 dequant to bf16", shape=[args.rows, args.cols], blocksize=64,
        card=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__,
        triton=triton.__version__, bitsandbytes=bnb_version, cuda=torch.version.cuda, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), checks=checks,
        results=results)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    card = next((c for c in ("h200", "h100", "a100", "l4") if c in props.name.lower()), "gpu")
    base = os.path.join(args.out, f"nf4-dequant-{card}-{stamp}")
    for suffix, text in ((".json", json.dumps(record_, indent=2)), (".txt", _table(record_))):
        tmp = base + suffix + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, base + suffix)
    print(_table(record_))
    return 0


def _table(rec) -> str:
    lines = [f"NF4 dequant {rec['shape'][0]}x{rec['shape'][1]} -> bf16, blocksize {rec['blocksize']}",
             f"card {rec['card']}, torch {rec['torch']}, triton {rec['triton']}, bitsandbytes {rec['bitsandbytes']}, "
             f"{rec['date']}", ""]
    lines += [f"{r['name']:66s} {r['ms'] * 1e3:8.1f} us  {r['tb_per_s']:6.2f} TB/s" for r in rec["results"]]
    lines += ["", *[f"check: {k}: {v}" for k, v in rec["checks"].items()]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

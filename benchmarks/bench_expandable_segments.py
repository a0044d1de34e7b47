"""What PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True changes: reserved vs allocated after fragmentation.

The caching allocator keeps freed blocks inside the segments it got from cudaMalloc. A segment can only go back
to the driver when nothing in it is alive, and a free hole can only serve a request that fits into it. The pattern
below mimics training with variable sequence lengths: each step allocates a large activation whose size grows a
little, then a small tensor that outlives it (think: a logged statistic), carved from the freed block.
The survivor pins the segment; the next, slightly larger activation does not fit the hole it leaves, so the
allocator asks the driver for a new segment. Reserved memory climbs while allocated memory stays small: fragmentation.

With expandable segments the allocator reserves virtual address space and maps physical pages into it on demand,
so one segment grows in place and freed pages at its end can be reused by a larger request.

Each setting runs in its own subprocess (the variable is read once, when CUDA initializes).

    python -m benchmarks.bench_expandable_segments --out DIR           # GPU
    python -m benchmarks.bench_expandable_segments --smoke --out DIR   # CPU: the subprocess and schema path only

Each row (one per setting) records memory, not time (reps 0): peak_gib = peak allocated; reserved, segments and the
step-by-step history are extras.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import harness

MiB = 2**20
SETTINGS = ("default", "expandable_segments:True")


def pattern(smoke: bool = False) -> dict:
    import torch
    device = "cpu" if smoke else "cuda"
    cuda = device == "cuda"
    unit = 1024 if smoke else MiB  # smoke: the same pattern in KiB on the CPU, allocator figures left empty
    survivors, history = [], []
    for step in range(8 if smoke else 48):
        size = (256 + 24 * step) * unit  # a growing activation: 256 MiB … 1.4 GiB
        act = torch.empty(size, dtype=torch.uint8, device=device)
        act.fill_(1)
        del act  # freed: its segment is cached by the allocator, not returned to the driver
        # 3 MiB that stays alive (> 1 MiB: served from the large pool, carved out of the segment just freed)
        survivors.append(torch.ones(3 * unit // 4, device=device))
        history.append(dict(step=step, allocated_mib=torch.cuda.memory_allocated() / MiB if cuda else None,
                            reserved_mib=torch.cuda.memory_reserved() / MiB if cuda else None))
    if not cuda:
        return dict(allocated_mib=None, reserved_mib=None, peak_allocated_mib=None, peak_reserved_mib=None,
                    segments=None, inactive_split_mib=None, num_alloc_retries=None,
                    reserved_after_4gib_request_mib=None, history=history)
    stats = torch.cuda.memory_stats()
    out = dict(
        allocated_mib=torch.cuda.memory_allocated() / MiB,
        reserved_mib=torch.cuda.memory_reserved() / MiB,
        peak_allocated_mib=torch.cuda.max_memory_allocated() / MiB,
        peak_reserved_mib=torch.cuda.max_memory_reserved() / MiB,
        segments=stats.get("segment.all.current"),
        inactive_split_mib=stats.get("inactive_split_bytes.all.current", 0) / MiB,
        num_alloc_retries=stats.get("num_alloc_retries"),
        history=history,
    )
    # then: can a big request still be served? (fragmented reserve that cannot serve it = wasted memory)
    try:
        big = torch.empty(4 * 1024 * MiB, dtype=torch.uint8, device="cuda")
        out["reserved_after_4gib_request_mib"] = torch.cuda.memory_reserved() / MiB
        del big
    except torch.OutOfMemoryError:
        out["reserved_after_4gib_request_mib"] = None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    parser.add_argument("--smoke", action="store_true", help="run the pattern on the CPU (code path only)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(pattern(args.smoke)))
        return 0
    import torch
    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU; --smoke runs the code path on the CPU")
    device = "cpu" if args.smoke else "cuda"
    res = harness.Results("expandable-segments", device, notes=(
        "caching allocator fragmentation: 48 growing activations (256 MiB + 24 MiB a step) each followed by a 3 MiB "
        "survivor; each setting in its own subprocess (PYTORCH_CUDA_ALLOC_CONF is read once, at CUDA start-up). "
        "Memory only: no timing (reps 0)."))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for setting in SETTINGS:
        env = dict(os.environ)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if setting != "default":
            env["PYTORCH_CUDA_ALLOC_CONF"] = setting
        cmd = [sys.executable, "-m", "benchmarks.bench_expandable_segments", "--child"] + (["--smoke"] if args.smoke
                                                                                             else [])
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {setting} child failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = None if r["peak_allocated_mib"] is None else r["peak_allocated_mib"] / 1024
        res.add("fragmentation pattern", setting, [], peak=peak, **r)
    path = res.write(args.out, harness.result_stem("expandable-segments", device, args.smoke))
    print(f"\nwrote {path}")
    for r in res.rows:
        print(f"  {r['impl']:28s} allocated {r['allocated_mib'] or 0:8.1f} MiB  reserved {r['reserved_mib'] or 0:8.1f} "
              f"MiB  peak reserved {r['peak_reserved_mib'] or 0:8.1f} MiB  segments {r['segments']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

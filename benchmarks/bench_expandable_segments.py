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

    PYTHONPATH=. python benchmarks/bench_expandable_segments.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

MiB = 2**20


def pattern() -> dict:
    import torch
    survivors, history = [], []
    for step in range(48):
        size = (256 + 24 * step) * MiB  # a growing activation: 256 MiB … 1.4 GiB
        act = torch.empty(size, dtype=torch.uint8, device="cuda")
        act.fill_(1)
        del act  # freed: its segment is cached by the allocator, not returned to the driver
        # 3 MiB that stays alive (> 1 MiB: served from the large pool, carved out of the segment just freed)
        survivors.append(torch.ones(3 * MiB // 4, device="cuda"))
        history.append(dict(step=step, allocated_mib=torch.cuda.memory_allocated() / MiB,
                            reserved_mib=torch.cuda.memory_reserved() / MiB))
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(pattern()))
        return 0
    import torch
    if not torch.cuda.is_available():
        print("needs a CUDA GPU; the recorded results are in benchmarks/results/memory-expandable-segments-*.json")
        return 1
    runs = {}
    for setting in ("", "expandable_segments:True"):
        env = dict(os.environ)
        env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        if setting:
            env["PYTORCH_CUDA_ALLOC_CONF"] = setting
        proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                              check=True)
        runs[setting or "default"] = json.loads(proc.stdout.strip().splitlines()[-1])
    import triton
    record = dict(benchmark="caching allocator fragmentation: growing activations + 3 MiB survivors",
                  card=torch.cuda.get_device_name(0), torch=torch.__version__, triton=triton.__version__,
                  cuda=torch.version.cuda,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), runs=runs)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"memory-expandable-segments-{datetime.date.today().isoformat()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
    for k, r in runs.items():
        print(f"{k:28s} allocated {r['allocated_mib']:8.1f} MiB  reserved {r['reserved_mib']:8.1f} MiB  "
              f"peak reserved {r['peak_reserved_mib']:8.1f} MiB  segments {r['segments']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

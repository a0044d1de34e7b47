"""Pieces the long-context benchmark (benchmarks/ctx_mem.py) adds to its run on a GPU.

- `offload_io`: what each home of an offloaded layer input costs — pinned-chunk copies device→host and back, and
  the spill file's write and read speed on this machine's local disk — in GB/s, through the library's own store.
- `attention_backends`: SDPA's causal GQA attention at the 8B shape, forward + backward, with cuDNN tried first
  against SDPA's own order, and how far their outputs and gradients differ.
- `PerTensorPinnedStore`: the store minilora used before the chunk pool (one pinned block per layer input, cached
  by shape), kept here only as the same-call baseline for the step-time comparison.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from minilora import ops
from minilora.models.offload_store import OffloadStore

GiB = 2**30


def _seconds(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def _round_trips(store, x, home: str, times: int = 3):
    """Seconds to put x into the store (copies landed, disk writes done) and to fetch it back, `times` times each,
    after one untimed round trip (the pool's slabs are pinned once, the file is grown once)."""
    store.put(x).fetch()
    out_s, back_s = [], []
    for _ in range(times):
        held = []

        def put():
            held.append(store.put(x))
            for w in held[0].writes:
                w.result()
            torch.cuda.current_stream().wait_stream(store.copy_stream(x.device))
        out_s.append(_seconds(put))
        back = []
        back_s.append(_seconds(lambda: back.append(held[0].fetch())))
        assert torch.equal(back[0], x), f"{home}: the round trip changed the bytes"
    return out_s, back_s


def offload_io(res, nbytes: int = GiB, spill_dir: str | None = None) -> None:
    """Rows "offload io": GB/s of the pinned pool both ways and of the spill file both ways (median of 3)."""
    x = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    for home, budget in (("pinned chunks", 2 * nbytes), ("spill file", 0)):
        store = OffloadStore(host_budget_bytes=budget, spill_dir=spill_dir or tempfile.gettempdir())
        out_s, back_s = _round_trips(store, x, home)
        stats = store.stats()
        for direction, seconds in (("device to host", sorted(out_s)[1]), ("host to device", sorted(back_s)[1])):
            res.add("offload io", f"{home}: {direction}", [seconds * 1e3], gb_s=nbytes / seconds / 1e9,
                    bytes=nbytes, disk_write_gb_s=stats["disk_bytes_written"] / stats["disk_write_s"] / 1e9
                    if stats["disk_write_s"] else None,
                    disk_read_gb_s=stats["disk_bytes_read"] / stats["disk_read_s"] / 1e9
                    if stats["disk_read_s"] else None,
                    note="median of 3 round trips of one tensor through the store (device timed by synchronizing); "
                         "disk rows include the staging copies; reads may be served from the page cache")
    torch.cuda.empty_cache()


def attention_backends(res, seq: int = 32768, heads: int = 32, kv_heads: int = 8, head_dim: int = 128) -> bool:
    """Causal GQA attention fwd+bwd at `seq` tokens under both preferences; returns True when cuDNN-first agreed
    with SDPA's own order (relative difference of outputs and input gradients below 2e-2) and was faster."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, kv_heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, kv_heads, seq, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    dy = torch.randn_like(q)
    results = {}

    def run(pref):
        ops.prefer_sdpa(pref)
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        y = ops.attention(qq, kk, vv, is_causal=True, enable_gqa=True)
        y.backward(dy)
        return y.detach(), qq.grad, kk.grad, vv.grad

    impls = {f"attention fwd+bwd, {p}": (lambda p=p: run(p)) for p in ("cudnn-first", "pytorch")}
    flops = 4 * seq * seq * heads * head_dim * 0.5 * 3.5  # causal: half the square; backward ~2.5x the forward
    previous = ops.sdpa_preference()
    rows = res.compare(f"attention B1 S{seq} nh{heads} nkv{kv_heads} hd{head_dim}", impls, rounds=3, reps=2,
                       warmup=1, flops=flops)
    for p in ("cudnn-first", "pytorch"):
        results[p] = run(p)
    ops.prefer_sdpa(previous)
    diffs = [float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(results["cudnn-first"],
                                                                                       results["pytorch"])]
    times = {r["impl"]: r["median_ms"] for r in rows if r["reps"]}
    faster = len(times) == 2 and times[list(impls)[0]] < times[list(impls)[1]]
    agree = all(d < 2e-2 for d in diffs) and faster
    res.extra.setdefault("checks", {})["attention_cudnn_vs_pytorch_rel_diff"] = {"y": diffs[0], "dq": diffs[1],
                                                                                 "dk": diffs[2], "dv": diffs[3],
                                                                                 "faster": faster}
    res.log(f"attention: cuDNN-first vs SDPA order rel diff y/dq/dk/dv {diffs}")
    return agree


class _PerTensorHandle:
    def __init__(self, store, x):
        self.store, self.device, self.back = store, x.device, None
        copy = store.stream
        copy.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(copy):
            free = store.free.get((tuple(x.shape), x.dtype))
            self.cpu = free.pop() if free else torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self.cpu.copy_(x, non_blocking=True)
        x.record_stream(copy)

    def prefetch(self):
        if self.back is not None:
            return
        with torch.cuda.stream(self.store.stream):
            x = self.cpu.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.store.stream)
        self.store.free.setdefault((tuple(self.cpu.shape), self.cpu.dtype), []).append(self.cpu)
        self.back = (x, done)

    def fetch(self):
        self.prefetch()
        x, done = self.back
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        x.record_stream(compute)
        self.back = self.cpu = None
        return x


class PerTensorPinnedStore:
    """The earlier design: one pinned block per layer input (the pinned allocator rounds it to a power of two)."""

    def __init__(self):
        self.stream = torch.cuda.Stream()
        self.free: dict = {}

    def put(self, x):
        return _PerTensorHandle(self, x.detach())


def env_summary() -> dict:
    return {k: os.environ.get(k) for k in ("MINILORA_OFFLOAD_HOST_GIB", "MINILORA_OFFLOAD_DIR", "MINILORA_SDPA")}

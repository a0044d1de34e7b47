"""The one timing harness and results schema every benchmark in this folder uses.

How a comparison is timed (`compare`):
- every implementation is first called `warmup` times, untimed (compilation, autotuning, allocator growth);
- then `rounds` rounds (at least 3); in each round every implementation is timed `reps` times in a row, and the
  order of the implementations turns by one place from round to round, so none of them always runs first (on a
  warm or a cold card, right after a neighbour that filled the cache...);
- every implementation is therefore timed the same number of times, rounds × reps, and each row reports the median
  and the [min–max] range over all of those repetitions. No implementation gets a second try that another lacks.
- on a CUDA device a repetition is timed with CUDA events recorded around the call; elsewhere with
  `time.perf_counter`, synchronizing the device before reading the clock;
- the peak memory of a row is `torch.cuda.max_memory_allocated()` during one extra untimed call, minus what was
  allocated before it (None off CUDA);
- for a memory-bound op, `compare(..., nbytes=N)` adds a device-to-device copy that reads N/2 and writes N/2 bytes
  to the same rotation: its time is the ceiling the op is measured against, in the same call, under the same order.

One results schema, written as JSON and read back by `load_results` (the lessons and the benchmarks page read it):

    {"schema": 1, "benchmark": str, "card": str, "versions": {"torch": ..., ...}, "date": ISO-8601 UTC,
     "git_commit": str, "command": str, "notes": str,
     "rows": [{"name": str, "impl": str, "median_ms", "min_ms", "max_ms": float, "reps": int, "peak_gib": float|None,
               ...extras}],
     ...optional top-level extras such as "provenance", "config", "checks"}

A row with `reps == 0` measured no time (a memory-only measurement, or an implementation that failed: then it
carries "error") and has None for the three times.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from benchmarks.schema import (  # noqa: F401 - re-exported: lessons read results through the harness
    SCHEMA,
    ResultsSchemaError,
    latest,
    load_results,
    pick,
    speed_word,
    spread,
    validate,
)
from minilora.io.atomic import write_text

GiB = 2**30
VERSIONED = {"torch": "torch", "triton": "triton", "transformers": "transformers", "peft": "peft",
             "bitsandbytes": "bitsandbytes", "liger_kernel": "liger-kernel"}
# Dense bf16 tensor-core peak from NVIDIA's datasheets (SXM parts, without sparsity), for model-FLOPs utilisation
# when the card's matmul ceiling was not measured in the same call.
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


# ---------------------------------------------------------------------------------------------------- clocks
class PerfCounterClock:
    """Wall clock for CPUs (and any device without events): synchronize, then read time.perf_counter."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync or (lambda: None)

    def mark(self):
        self.sync()
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        return (end - start) * 1e3


class CudaEventClock:
    """CUDA events recorded on the current stream: the device's own time between two points, with no host sync
    inside the timed region (the host queues ahead, as in a training step)."""

    def __init__(self):
        import torch
        self.torch = torch

    def mark(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self):
        self.torch.cuda.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)


def default_clock(device: str):
    if str(device).startswith("cuda"):
        return CudaEventClock()
    import torch
    backend = getattr(torch, str(device).split(":")[0], None)
    sync = getattr(backend, "synchronize", None) if str(device) != "cpu" else None
    return PerfCounterClock(sync)


# ---------------------------------------------------------------------------------------------------- timing
def rotation(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: round k starts at the k-th implementation (mod their number)."""
    n = len(names)
    return [names[k % n:] + names[:k % n] for k in range(rounds)] if n else [[] for _ in range(rounds)]


def summarize(samples_ms: list[float]) -> dict:
    """Median and [min–max] over every timed repetition."""
    if not samples_ms:
        return {"median_ms": None, "min_ms": None, "max_ms": None, "reps": 0}
    return {"median_ms": statistics.median(samples_ms), "min_ms": min(samples_ms), "max_ms": max(samples_ms),
            "reps": len(samples_ms)}


def _is_oom(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _error_text(err: BaseException) -> str:
    return "out of memory" if _is_oom(err) else f"{type(err).__name__}: {err}"[:300]


def _free_cuda():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def time_rotated(impls: dict[str, Callable[[], object]], *, rounds: int = 3, reps: int = 5, warmup: int = 1,
                 clock=None, on_error: str = "record", log: Callable[[str], None] | None = None) -> dict:
    """Time every implementation `rounds × reps` times with the order rotated each round (see the module docstring).

    Returns {"samples": {name: [ms, ...]}, "errors": {name: text}, "orders": [[name, ...] per round]}. An
    implementation that raises (out of memory, a missing feature) is dropped from the rest of the rotation and its
    error kept, unless on_error="raise"."""
    if rounds < 3:
        raise ValueError(f"rounds={rounds}: the harness needs at least 3 rounds so the order can rotate; pass >= 3")
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps={reps}, warmup={warmup}: need reps >= 1 and warmup >= 0")
    clock = clock or PerfCounterClock()
    samples = {name: [] for name in impls}
    errors: dict[str, str] = {}
    orders = []

    def fail(name, err):
        if on_error == "raise":
            raise err
        errors[name] = _error_text(err)
        if log:
            log(f"  {name}: failed ({errors[name]})")
        _free_cuda_if_possible()

    for name, fn in impls.items():
        try:
            for _ in range(warmup):
                fn()
            _sync(clock)
        except Exception as err:  # one broken baseline must not lose the others
            fail(name, err)
    for order in rotation([n for n in impls if n not in errors], rounds):
        order = [n for n in order if n not in errors]
        orders.append(order)
        for name in order:
            fn = impls[name]
            try:
                marks = []
                for _ in range(reps):
                    start = clock.mark()
                    fn()
                    marks.append((start, clock.mark()))
                _sync(clock)
                samples[name] += [clock.elapsed_ms(a, b) for a, b in marks]
            except Exception as err:
                fail(name, err)
    for name in errors:
        samples[name] = []
    return {"samples": samples, "errors": errors, "orders": orders}


def _sync(clock):
    sync = getattr(clock, "sync", None)
    if sync:
        sync()


def _free_cuda_if_possible():
    try:
        _free_cuda()
    except Exception:  # a broken device leaves nothing to free
        pass


def peak_gib(fn: Callable[[], object], device: str) -> float | None:
    """Peak GiB allocated during one call of fn above what was allocated before it (CUDA only, else None)."""
    if not str(device).startswith("cuda"):
        return None
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / GiB


def copy_impl(nbytes: int, device: str):
    """A device-to-device copy that reads nbytes/2 and writes nbytes/2: the bandwidth ceiling for an op that moves
    nbytes in all. Returns (fn, release) — call release() to free the two buffers."""
    import torch
    half = max(1, nbytes // 2)
    src = torch.empty(half, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    buffers = [src, dst]

    def fn():
        buffers[1].copy_(buffers[0])

    def release():
        buffers.clear()
        buffers.extend([None, None])
    return fn, release


COPY_IMPL = "device copy (ceiling)"


def matmul_ceiling(results: "Results", device: str, n: int = 8192, rounds: int = 3, reps: int = 5):
    """Measure a dense bf16 n×n×n matmul in this call and append its row; returns (TFLOP/s, source text) — the
    datasheet figure instead where no CUDA device is there to measure."""
    import torch
    if not str(device).startswith("cuda"):
        return None, "not measured (no CUDA device)"
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    row = results.compare(f"matmul {n}^3 bf16", {"torch.mm": lambda: torch.mm(a, b, out=out)}, rounds=rounds,
                          reps=reps, warmup=3, flops=2.0 * n**3, measure_peak=False)[0]
    if row["reps"]:
        return row["tflops"], f"measured in this call: {n}x{n}x{n} bf16 torch.mm, median"
    return datasheet_peak(device)


def datasheet_peak(device: str):
    """(dense bf16 TFLOP/s, source) from the datasheet table, or (None, reason)."""
    name = card_name(device)
    for key, tflops in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return tflops, f"datasheet: {tflops:.0f} TFLOP/s dense bf16 for {key} SXM"
    return None, f"no datasheet figure for {name!r}"


# ---------------------------------------------------------------------------------------------------- results
def card_name(device: str) -> str:
    if str(device).startswith("cuda"):
        import torch
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return f"CPU {cpu} ({cores} cores usable)"


def versions() -> dict:
    """Versions of the stack a result depends on (only those installed)."""
    found = {}
    for key, dist in VERSIONED.items():
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "torch" in found:
        import torch
        found["torch"] = torch.__version__
        if torch.version.cuda:
            found["cuda"] = torch.version.cuda
    found["python"] = platform.python_version()
    return found


def git_commit() -> str:
    """MINILORA_GIT_COMMIT if set (a copy of the tree without .git), else `git rev-parse HEAD` (+ "-dirty")."""
    if os.environ.get("MINILORA_GIT_COMMIT"):
        return os.environ["MINILORA_GIT_COMMIT"]
    root = pathlib.Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git here; set MINILORA_GIT_COMMIT)"


def result_stem(benchmark: str, device: str, smoke: bool = False) -> str:
    """The file name (without .json) a run is recorded under: <benchmark>-<card>-<UTC date>[-smoke], e.g.
    elementwise-h200-2026-11-29; lessons pick the newest non-smoke file of a benchmark by this pattern."""
    name = card_name(device).lower()
    card = next((c for c in ("h200", "h100", "a100", "l40s", "l4", "a10g", "t4") if c in name),
                "cpu" if name.startswith("cpu") else "gpu")
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"{benchmark}-{card}-{day}" + ("-smoke" if smoke else "")


class Results:
    """Rows of one benchmark run plus its metadata; `compare` measures and appends, `write` saves the JSON."""

    def __init__(self, benchmark: str, device: str, notes: str = "", command: str | None = None, log=print):
        self.benchmark, self.device, self.log = benchmark, str(device), log
        self.rows: list[dict] = []
        self.notes = notes
        self.extra: dict = {}
        self.command = command or "python -m " + _module_name() + " " + " ".join(sys.argv[1:])
        self.date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._autosave = None

    def autosave(self, out_dir: str | os.PathLike, stem: str) -> None:
        """Rewrite <out_dir>/<stem>.json after every row, so a run cut off by a time limit keeps what it measured."""
        self._autosave = (out_dir, stem)

    def add(self, name: str, impl: str, samples_ms: list[float] | None = None, peak: float | None = None,
            **extras) -> dict:
        row = {"name": name, "impl": impl, **summarize(list(samples_ms or [])), "peak_gib": peak, **extras}
        self.rows.append(row)
        self.log(format_row(row))
        if self._autosave:
            self.write(*self._autosave)
        return row

    def compare(self, name: str, impls: dict[str, Callable[[], object]], *, rounds: int = 3, reps: int = 5,
                warmup: int = 1, nbytes: int | None = None, flops: float | None = None, measure_peak: bool = True,
                clock=None, extras: dict | None = None) -> list[dict]:
        """Time `impls` against each other (rotated rounds, same count each) and append one row per implementation.

        nbytes: the floor bytes the op reads + writes; adds the copy ceiling to the rotation and a "tb_s" and
        "pct_of_copy" extra to each row. flops: adds "tflops". extras: {impl: {key: value}} merged into rows."""
        impls = dict(impls)
        release = None
        if nbytes:
            impls[COPY_IMPL], release = copy_impl(nbytes, self.device)
        self.log(f"{name}: {len(impls)} implementations x {rounds} rounds x {reps} reps "
                 f"(warm-up {warmup}, order rotated)")
        timing = time_rotated(impls, rounds=rounds, reps=reps, warmup=warmup,
                              clock=clock or default_clock(self.device), log=self.log)
        peaks = {}
        for impl, fn in impls.items():
            if impl in timing["errors"] or not measure_peak or impl == COPY_IMPL:
                continue
            try:
                peaks[impl] = peak_gib(fn, self.device)
            except Exception as err:
                timing["errors"][impl] = _error_text(err)
                timing["samples"][impl] = []
                _free_cuda_if_possible()
        if release:
            release()
        ceiling_ms = statistics.median(timing["samples"][COPY_IMPL]) if timing["samples"].get(COPY_IMPL) else None
        rows = []
        for impl in impls:
            samples = timing["samples"][impl]
            more = dict((extras or {}).get(impl, {}))
            if impl in timing["errors"]:
                more["error"] = timing["errors"][impl]
            if samples and nbytes:
                median = statistics.median(samples)
                more["tb_s"] = nbytes / median / 1e9
                if ceiling_ms:
                    more["pct_of_copy"] = 100.0 * ceiling_ms / median
            if samples and flops:
                more["tflops"] = flops / statistics.median(samples) / 1e9
            if nbytes:
                more["bytes"] = nbytes
            rows.append(self.add(name, impl, samples, peaks.get(impl), **more))
        return rows

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "benchmark": self.benchmark, "card": card_name(self.device),
                "versions": versions(), "date": self.date, "git_commit": git_commit(), "command": self.command,
                "rows": self.rows, "notes": self.notes, **self.extra}

    def write(self, out_dir: str | os.PathLike, stem: str) -> pathlib.Path:
        """Write <out_dir>/<stem>.json atomically (a cut-off run never leaves half a file) and return its path."""
        data = self.to_dict()
        validate(data, f"{stem}.json")
        path = pathlib.Path(out_dir) / f"{stem}.json"
        write_text(path, json.dumps(data, indent=1, default=_jsonable) + "\n")
        return path


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec and spec.name else os.path.basename(sys.argv[0])


def format_row(row: dict) -> str:
    if not row["reps"]:
        return f"  {row['name']:28s} {row['impl']:32s} {'—':>9s}  {row.get('error', '(no timing)')}"
    peak = "" if row["peak_gib"] is None else f" {row['peak_gib']:7.3f} GiB"
    more = "".join(f" {k} {row[k]:.2f}" for k in ("tb_s", "pct_of_copy", "tflops") if row.get(k) is not None)
    return (f"  {row['name']:28s} {row['impl']:32s} {row['median_ms']:9.3f} ms "
            f"[{row['min_ms']:.3f}–{row['max_ms']:.3f}] x{row['reps']}{peak}{more}")


def print_table(rows: list[dict], title: str = "") -> None:
    """The short table every script prints last."""
    if title:
        print(f"\n{title}")
    print(f"  {'name':28s} {'impl':32s} {'median ms':>12s} {'[min–max]':>20s} {'peak GiB':>9s}")
    for r in rows:
        if not r["reps"]:
            print(f"  {r['name']:28s} {r['impl']:32s} {'—':>12s} {r.get('error', '(no timing)'):>20s}")
            continue
        rng = f"[{r['min_ms']:.3f}–{r['max_ms']:.3f}]"
        peak = "—" if r["peak_gib"] is None else f"{r['peak_gib']:.3f}"
        print(f"  {r['name']:28s} {r['impl']:32s} {r['median_ms']:12.3f} {rng:>20s} {peak:>9s}")


# ---------------------------------------------------------------------------------------------------- scripts
def add_run_args(parser, *, reps: int, warmup: int, plot: bool = False) -> None:
    """The options every benchmark script shares."""
    parser.add_argument("--rounds", type=int, default=3, help="rotated rounds (at least 3)")
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per implementation per round")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls per implementation first")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON (and PNG)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU: checks the code path, the timings mean nothing")
    if plot:
        parser.add_argument("--plot", metavar="JSON", help="only draw the PNG of a recorded file")


def draw_recorded(json_path: str, plot) -> int:
    png = os.path.splitext(json_path)[0] + ".png"
    plot(json_path, png)
    print(f"wrote {png}")
    return 0


def finish(results: "Results", out_dir, stem: str, plot=None) -> pathlib.Path:
    """Write the JSON (and the PNG when the script draws one) and print the short table last."""
    path = results.write(out_dir, stem)
    drawn = ""
    if plot is not None:
        plot(str(path), os.path.join(out_dir, stem + ".png"))
        drawn = f" and {stem}.png"
    print_table(results.rows, f"wrote {path}{drawn}")
    return path

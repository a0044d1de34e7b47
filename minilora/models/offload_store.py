"""Where offloaded layer inputs live: a bounded pool of equal pinned host chunks, then a spill file on local disk.

Why chunks. PyTorch's pinned-memory allocator rounds every block up to a power of two, so one pinned block per
layer input wastes up to half of it: at 344,064 tokens an 8B layer input is 2.6 GiB and takes 4 GiB, and 32 of
them ask for 128 GiB of host memory where 84 would do. Here memory is pinned in 1 GiB slabs (a power of two: no
rounding) cut into equal chunks (32 MiB by default); a tensor is stored as a list of pieces, one chunk each, so it
wastes at most one chunk's tail. Chunks are reused from step to step: the slabs are pinned once.

Why a budget. Pinned memory cannot be swapped out: a pool that grows without bound takes the host down with it.
The pool stops growing at its host budget (default: what the host has available when the pool is made, minus a
margin; ``MINILORA_OFFLOAD_HOST_GIB`` or `configure` set it). Pieces that do not fit go to an anonymous file on
local disk (``MINILORA_OFFLOAD_DIR``, default the temporary directory; the file has no name and vanishes with
the process), through a few staging chunks, written and read back by one background thread so the GPU keeps
computing while the disk works (writes and reads have separate staging chunks, so a read never waits for a write
that is queued behind it). The costs: pinned memory moves at PCIe speed and its copies overlap the compute;
the disk moves at the disk's speed (measured figures: docs/benchmarks.md), so a spilled input can make a layer wait.

How the copies stay ordered. Every device↔host copy runs on one side stream per device (the caller's), so a chunk
handed back once its copy to the device is *queued* is safe to fill again: the next copy into it is queued behind.
The staging chunks are also touched by the CPU (the disk thread), so each carries the event of its last copy and
the thread waits for that event before it reads or writes the chunk's memory.

On a CPU (tests, learners) the same code runs without streams: the "device" copies are plain copies.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

MiB, GiB = 2**20, 2**30
DEFAULT_CHUNK_BYTES = 32 * MiB
SLAB_BYTES = GiB
STAGING_CHUNKS = 2  # per direction: the training thread fills write staging, the disk thread owns read staging


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what the kernel can hand out without swapping), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_host_budget() -> int:
    """``MINILORA_OFFLOAD_HOST_GIB`` if set, else available host memory minus a margin of max(4 GiB, 10%)."""
    env = os.environ.get("MINILORA_OFFLOAD_HOST_GIB")
    if env is not None:
        return _budget_bytes(env, "MINILORA_OFFLOAD_HOST_GIB")
    available = host_available_bytes()
    if available is None:
        return 8 * GiB
    return max(0, available - max(4 * GiB, available // 10))


def _budget_bytes(value, name: str) -> int:
    try:
        gib = float(value)
    except (TypeError, ValueError):
        gib = math.nan
    if not math.isfinite(gib) or gib < 0:
        raise ValueError(f"{name}={value!r}: give the host memory for offloaded activations in GiB, a number >= 0 "
                         "(0 sends every offloaded input to the spill file on disk)")
    return int(gib * GiB)


class HostChunkPool:
    """Equal chunks of host memory (pinned when a GPU is present), cut from power-of-two slabs, at most
    `budget_bytes` in all. `take` returns a free chunk or None once the budget is reached."""

    def __init__(self, chunk_bytes: int, budget_bytes: int, pin: bool):
        if chunk_bytes <= 0 or chunk_bytes & (chunk_bytes - 1):
            raise ValueError(f"chunk size {chunk_bytes} bytes: use a power of two (e.g. 32 MiB), so chunks tile the "
                             "pinned slabs exactly")
        self.chunk_bytes, self.budget_bytes, self.pin = chunk_bytes, budget_bytes, pin
        self.slabs: list[torch.Tensor] = []
        self.free: list[torch.Tensor] = []
        self.allocated_bytes = 0
        self.in_use = self.peak_in_use = 0

    def _grow(self) -> bool:
        room = self.budget_bytes - self.allocated_bytes
        if room < self.chunk_bytes:
            return False
        size = min(SLAB_BYTES, 1 << (room.bit_length() - 1))  # a power of two: the pinned allocator adds nothing
        size = max(size, self.chunk_bytes)
        slab = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
        self.slabs.append(slab)
        self.free.extend(slab.split(self.chunk_bytes))
        self.allocated_bytes += size
        return True

    def take(self) -> torch.Tensor | None:
        if not self.free and not self._grow():
            return None
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return self.free.pop()

    def give_back(self, chunk: torch.Tensor) -> None:
        self.in_use -= 1
        self.free.append(chunk)


class SpillFile:
    """An anonymous file on local disk holding chunk-sized slots; freed slots are reused."""

    def __init__(self, directory: str | None, slot_bytes: int):
        directory = directory or os.environ.get("MINILORA_OFFLOAD_DIR") or tempfile.gettempdir()
        if not os.path.isdir(directory):
            raise ValueError(f"offload spill directory {directory!r} does not exist: create it or point "
                             "MINILORA_OFFLOAD_DIR at a folder on a local disk")
        self.directory, self.slot_bytes = directory, slot_bytes
        self.file = tempfile.TemporaryFile(dir=directory)  # no name on disk: nothing is left behind
        self.fd = self.file.fileno()
        self.free: list[int] = []
        self.slots = 0
        self.in_use = self.peak_in_use = 0
        self.bytes_written = self.bytes_read = 0
        self.write_s = self.read_s = 0.0
        self.lock = threading.Lock()

    def slot(self) -> int:
        with self.lock:
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)
            if self.free:
                return self.free.pop()
            self.slots += 1
            return self.slots - 1

    def release(self, slot: int) -> None:
        with self.lock:
            self.in_use -= 1
            self.free.append(slot)

    def write(self, slot: int, chunk: torch.Tensor, nbytes: int) -> None:
        view, offset, done = memoryview(chunk.numpy())[:nbytes], slot * self.slot_bytes, 0
        start = time.perf_counter()
        try:
            while done < nbytes:
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as err:
            raise OSError(err.errno, f"writing offloaded activations to a spill file in {self.directory} failed "
                                     f"({err.strerror}): free disk space there, point MINILORA_OFFLOAD_DIR at "
                                     "another local disk, or raise the host budget") from err
        self.write_s += time.perf_counter() - start
        self.bytes_written += nbytes

    def read(self, slot: int, chunk: torch.Tensor, nbytes: int) -> None:
        view, offset, done = memoryview(chunk.numpy())[:nbytes], slot * self.slot_bytes, 0
        start = time.perf_counter()
        while done < nbytes:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"the offload spill file in {self.directory} ended early (slot {slot}): was it truncated?")
            done += got
        self.read_s += time.perf_counter() - start
        self.bytes_read += nbytes


class _Staging:
    """A pinned chunk the disk thread reads or writes, with the event of the last device copy that used it."""

    def __init__(self, chunk: torch.Tensor):
        self.chunk, self.event = chunk, None

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
            self.event = None


class StoredTensor:
    """One offloaded tensor: its pieces (a pool chunk or a spill-file slot each) and, once prefetched, its copy on
    the way back to the device."""

    def __init__(self, store: OffloadStore, shape, dtype, device):
        self.store, self.shape, self.dtype, self.device = store, shape, dtype, device
        self.pieces: list[list] = []  # [start byte, nbytes, chunk or None, slot or None]
        self.writes: list[Future] = []
        self.back = None  # (device tensor, reads future or None, event or None)

    def offloaded_bytes(self) -> int:
        """The bytes this tensor holds off the device (pool chunks and spill slots, tails not counted)."""
        return sum(n for _, n, _, _ in self.pieces)

    def __del__(self):
        try:
            if self.pieces:
                self.store._release(self)
        except Exception:
            pass

    def prefetch(self) -> None:
        """Start bringing the tensor back (no-op when already started)."""
        if self.back is None:
            self.back = self.store._bring_back(self)

    def fetch(self) -> torch.Tensor:
        """The tensor on its device, ready for the current stream; its host chunks and slots are released."""
        self.prefetch()
        out, reads, done = self.back
        if reads is not None:
            reads.result()  # re-raises a disk error here, in the training thread
        if out.is_cuda:
            if done is None:  # disk reads queued their copies from the other thread: mark the end now
                done = torch.cuda.Event()
                done.record(self.store.copy_stream(out.device))
            compute = torch.cuda.current_stream(out.device)
            compute.wait_event(done)
            out.record_stream(compute)  # allocated on the copy stream, used on this one
        self.back, self.pieces = None, []
        return out.view(self.shape)


class OffloadStore:
    """Offloaded tensors of one process: a `HostChunkPool` and, when it is full, a `SpillFile`."""

    def __init__(self, host_budget_bytes: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 spill_dir: str | None = None, pin: bool | None = None):
        pin = torch.cuda.is_available() if pin is None else pin
        budget = default_host_budget() if host_budget_bytes is None else host_budget_bytes
        self.pool = HostChunkPool(chunk_bytes, budget, pin)
        self.chunk_bytes, self.spill_dir, self.pin = chunk_bytes, spill_dir, pin
        self.spill: SpillFile | None = None
        self.staging: queue.Queue | None = None  # write staging: taken here, handed back by the disk thread
        self.read_staging: list[_Staging] = []  # used by the disk thread alone
        self.disk_thread: ThreadPoolExecutor | None = None
        self.streams: dict = {}

    # --- plumbing ----------------------------------------------------------------------------------------------
    def copy_stream(self, device: torch.device):
        key = device.index if device.index is not None else torch.cuda.current_device()
        if key not in self.streams:
            self.streams[key] = torch.cuda.Stream(device=key)
        return self.streams[key]

    def _disk(self):
        if self.spill is None:
            self.spill = SpillFile(self.spill_dir, self.chunk_bytes)
            self.staging = queue.Queue()
            for i in range(2 * STAGING_CHUNKS):  # outside the budget: a few chunks, so the disk path always runs
                staging = _Staging(torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=self.pin))
                if i < STAGING_CHUNKS:
                    self.staging.put(staging)
                else:
                    self.read_staging.append(staging)
            self.disk_thread = ThreadPoolExecutor(1, thread_name_prefix="minilora-offload-disk")
        return self.spill

    def stats(self) -> dict:
        """Host bytes pinned, chunks in use at the peak, bytes spilled to disk and the disk's time both ways."""
        spill = self.spill
        return {"host_pool_bytes": self.pool.allocated_bytes, "host_budget_bytes": self.pool.budget_bytes,
                "peak_chunks_in_use": self.pool.peak_in_use, "chunk_bytes": self.chunk_bytes,
                "peak_spill_bytes": spill.peak_in_use * self.chunk_bytes if spill else 0,
                "disk_bytes_written": spill.bytes_written if spill else 0,
                "disk_bytes_read": spill.bytes_read if spill else 0,
                "disk_write_s": spill.write_s if spill else 0.0, "disk_read_s": spill.read_s if spill else 0.0}

    # --- storing -----------------------------------------------------------------------------------------------
    def put(self, x: torch.Tensor) -> StoredTensor:
        """Copy x to the host (pool chunks, then the spill file); x may be freed by its owner right after."""
        x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()
        stored = StoredTensor(self, tuple(x.shape), x.dtype, x.device)
        flat = x.reshape(-1).view(torch.uint8)
        if x.is_cuda:
            copy = self.copy_stream(x.device)
            copy.wait_stream(torch.cuda.current_stream(x.device))  # x is complete before it is read
            with torch.cuda.stream(copy):
                self._put_pieces(stored, flat, copy)
            x.record_stream(copy)  # x's memory is not reused before the copy has read it
        else:
            self._put_pieces(stored, flat, None)
        return stored

    def _put_pieces(self, stored: StoredTensor, flat: torch.Tensor, copy) -> None:
        for start in range(0, flat.numel(), self.chunk_bytes):
            n = min(self.chunk_bytes, flat.numel() - start)
            chunk = self.pool.take()
            if chunk is not None:
                chunk[:n].copy_(flat[start:start + n], non_blocking=copy is not None)
                stored.pieces.append([start, n, chunk, None])
                continue
            spill = self._disk()
            slot, staging = spill.slot(), self.staging.get()  # waits while every staging chunk is busy
            staging.chunk[:n].copy_(flat[start:start + n], non_blocking=copy is not None)
            if copy is not None:
                staging.event = torch.cuda.Event()
                staging.event.record(copy)
            stored.writes.append(self.disk_thread.submit(self._write, spill, slot, staging, n))
            stored.pieces.append([start, n, None, slot])

    def _write(self, spill: SpillFile, slot: int, staging: _Staging, n: int) -> None:
        try:
            staging.wait()  # the device-to-host copy has landed
            spill.write(slot, staging.chunk, n)
        finally:
            self.staging.put(staging)

    # --- bringing back -----------------------------------------------------------------------------------------
    def _bring_back(self, stored: StoredTensor):
        device, cuda = stored.device, stored.device.type == "cuda"
        nbytes = math.prod(stored.shape) * stored.dtype.itemsize
        copy = self.copy_stream(device) if cuda else None
        with torch.cuda.stream(copy) if cuda else contextlib.nullcontext():
            out = torch.empty(nbytes, dtype=torch.uint8, device=device)
            on_disk = []
            for start, n, chunk, slot in stored.pieces:
                if chunk is None:
                    on_disk.append((start, n, slot))
                    continue
                out[start:start + n].copy_(chunk[:n], non_blocking=cuda)
                self.pool.give_back(chunk)  # the next copy into it is queued behind this one on the same stream
            reads = None
            if on_disk:
                writes = stored.writes
                reads = self.disk_thread.submit(self._read_all, writes, on_disk, out, copy)
            stored.pieces = []  # chunks are back in the pool; slots are released by the reads
            done = None
            if cuda and not on_disk:
                done = torch.cuda.Event()
                done.record(copy)
        stored.writes = []
        return out.view(stored.dtype), reads, done

    def _read_all(self, writes, on_disk, out: torch.Tensor, copy) -> None:
        for w in writes:
            w.result()  # a failed write fails the read, with the write's message
        for i, (start, n, slot) in enumerate(on_disk):
            staging = self.read_staging[i % len(self.read_staging)]
            try:
                staging.wait()  # its previous host-to-device copy has read it
                self.spill.read(slot, staging.chunk, n)
                if copy is not None:
                    with torch.cuda.stream(copy):
                        out[start:start + n].copy_(staging.chunk[:n], non_blocking=True)
                        staging.event = torch.cuda.Event()
                        staging.event.record(copy)
                else:
                    out[start:start + n].copy_(staging.chunk[:n])
            finally:
                self.spill.release(slot)

    def _release(self, stored: StoredTensor) -> None:
        """Give back what a tensor that was stored but never brought back holds (e.g. a forward with no backward)."""
        slots = [slot for _, _, chunk, slot in stored.pieces if chunk is None]
        for _, _, chunk, _ in stored.pieces:
            if chunk is not None:
                self.pool.give_back(chunk)  # a later copy into it queues behind the one that filled it
        stored.pieces = []
        if slots:
            self.disk_thread.submit(lambda: [self.spill.release(s) for s in slots])  # after the pending writes


_STORE: OffloadStore | None = None
_SETTINGS: dict = {}


def configure(host_budget_gib: float | None = None, spill_dir: str | None = None,
              chunk_mib: int = DEFAULT_CHUNK_BYTES // MiB) -> None:
    """Set the host budget (GiB; None: available memory minus a margin), the spill directory and the chunk size of
    the process's offload store. Takes effect for the next store made: call it before training starts."""
    global _STORE
    _SETTINGS.clear()
    _SETTINGS.update(host_budget_bytes=None if host_budget_gib is None else
                     _budget_bytes(host_budget_gib, "host_budget_gib"),
                     spill_dir=spill_dir, chunk_bytes=int(chunk_mib) * MiB)
    _STORE = None


def default_store() -> OffloadStore:
    """The process's offload store, made on first use with the `configure`d settings."""
    global _STORE
    if _STORE is None:
        _STORE = OffloadStore(**_SETTINGS)
    return _STORE


class using_store:
    """``with using_store(store): ...`` makes `store` the process's offload store inside the block (benchmarks
    compare stores this way; tests give one a small budget)."""

    def __init__(self, store):
        self.store = store

    def __enter__(self):
        global _STORE
        self.previous, _STORE = _STORE, self.store
        return self.store

    def __exit__(self, *exc):
        global _STORE
        _STORE = self.previous
        return False

"""Training on several processes: `torchrun` starts them, PyTorch's DDP or FSDP2 keeps them in step.

    torchrun --nproc_per_node N -m minilora train ... --parallel ddp|fsdp

torchrun gives every process RANK, WORLD_SIZE and LOCAL_RANK in its environment; `session()` joins them into one
process group (NCCL between GPUs, gloo between CPU processes) for the duration of a ``with`` block and leaves it on
exit — the one place a group is joined and left. The `Trainer` is handed that session's `DistContext` (or reads the
group already joined) and asks this module for:

- the wrapped model: DDP keeps a full copy of the model per rank and all-reduces the LoRA gradients after each
  backward; FSDP2 (``fully_shard`` per decoder layer + the root) keeps 1/N of every parameter per rank, all-gathers a
  layer's parameters just before it runs and reduce-scatters its gradients afterwards (ZeRO-3). For a 4-bit base
  every Linear4bit first stores its quantization state as uint8 parameters (`Linear4bit.store_as_bytes`) so the
  codes AND the block scales are sharded and the mixed-precision policy never casts them;
- each rank's share of a micro-batch (`rank_slice`), so N ranks together read exactly the global batch one process
  would read, in the same order;
- sums over ranks (`all_reduce_sum`): the number of trained tokens of the step (the loss divides by the GLOBAL
  count), the logged loss;
- full tensors from shards (`full_tensor`) and shards from full tensors (`shard_like`), so checkpoints and adapters
  on disk are the same files one process writes.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .arguments import check_parallel


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    parallel: str | None = None  # None (one process), "ddp" or "fsdp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _join_from_env() -> bool:
    """Join the process group torchrun describes in the environment; False when there is nothing to join (one plain
    process, or a group someone else already joined and so must leave)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set: start the processes with "
                               "`torchrun --nproc_per_node N ...`, which sets RANK, LOCAL_RANK, MASTER_ADDR "
                               "and MASTER_PORT")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                               "GPU(s): pass --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


@contextlib.contextmanager
def session(parallel: str | None = None):
    """``with session("fsdp") as ctx:`` — join torchrun's process group (a no-op in one plain process), yield where
    this process stands, and leave the group on the way out, error or not. A group joined before the ``with`` (by
    the caller) is used and left to the caller: whoever joins a group leaves it."""
    check_parallel(parallel)
    joined = _join_from_env()
    try:
        yield context(parallel)
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def context(parallel: str | None = None) -> DistContext:
    """Where this process stands: rank, world size and the parallel mode (default ddp when there are several)."""
    check_parallel(parallel)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, parallel or "ddp")


def device_for(ctx: DistContext) -> torch.device:
    return torch.device("cuda", ctx.local_rank) if torch.cuda.is_available() else torch.device("cpu")


# --- data -----------------------------------------------------------------------------------------------------------
def rank_slice(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's share of n items: contiguous, in order, sizes differing by at most one (the first
    n % world_size ranks take one more), so the ranks' shares concatenated are exactly the n items."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_reduce_sum(value, ctx: DistContext, device: torch.device | None = None):
    """The sum of a number (int or float) over all ranks; the value itself with one process."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64,
                     device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return type(value)(t.item())


def text_from_main(text: str | None, ctx: DistContext) -> str:
    """Rank 0's ``text`` on every rank (a collective; with one process, the text itself). Sent as UTF-8 bytes in
    a tensor: nothing is pickled between processes."""
    if not ctx.enabled:
        return text
    device = device_for(ctx)
    data = (text or "").encode() if ctx.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if ctx.is_main and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


# --- wrapping -------------------------------------------------------------------------------------------------------
def mixed_precision_policy(device: torch.device):
    """bf16 parameters for compute with float32 gradient reduction on GPUs; plain float32 on CPUs (gloo and CPU
    matmuls gain nothing from bf16). Integer tensors (the 4-bit codes, stored bytes) are never cast by FSDP."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP(model), or the model itself sharded in place by FSDP2."""
    if not ctx.enabled:
        return model
    model.to(device)
    if ctx.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # buffers (rotary tables, 4-bit scales) are constant: copied from rank 0 once, not before every forward
        # (newer torch names the switch forward_sync_buffers and deprecates broadcast_buffers)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
    from torch.distributed.fsdp import fully_shard

    from ..linear4bit import Linear4bit
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.store_as_bytes()
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"--parallel fsdp shards a causal LM per decoder layer (model.model.layers), got "
                        f"{type(model).__name__}; use --parallel ddp for other models")
    policy = mixed_precision_policy(device)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)  # the root: embedding, final norm, head
    return model


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """Every parameter of an FSDP-sharded model whole on every rank for the duration (a collective on entry and
    exit: every rank enters together), e.g. to generate text. No-op for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)  # forwards meanwhile neither gather nor free
    try:
        yield model
    finally:
        for m in sharded:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module) if type(module).__name__ == "DistributedDataParallel" else module


# --- shards <-> full tensors ----------------------------------------------------------------------------------------
def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank must call it, in the same order), else t."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` (the whole tensor, present on every rank) laid out as ``like`` is: this rank's shard for a sharded
    ``like`` (cut locally, no communication), else ``full`` itself."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if is_sharded(t) else t
    return local.numel() * local.element_size()


def local_shard_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank really holds: parameters (their local shards) by trainable/frozen, buffers, gradients and
    the optimizer's state tensors (what exists right now: gradients between backward and zero_grad only)."""
    out = {"trainable": 0, "frozen": 0, "buffers": 0, "gradients": 0, "optimizer": 0}
    for p in model.parameters():
        out["trainable" if p.requires_grad else "frozen"] += _local_bytes(p)
        if p.grad is not None:
            out["gradients"] += _local_bytes(p.grad)
    out["buffers"] = sum(b.numel() * b.element_size() for b in model.buffers())
    if optimizer is not None:
        out["optimizer"] = sum(_local_bytes(v) for st in optimizer.state.values() for k, v in st.items()
                               if torch.is_tensor(v) and k != "step")
    return out

"""Measuring memory for real: the bytes of a model's tensors, of a training step's gradients and optimizer state,
of what a forward pass leaves behind for the backward, and the peak a run reached.

Activations are the hard part: the bytes a forward pass leaves behind for the backward.

Two places hold them, and a measurement must look at both:

1. **Autograd's saved tensors** — everything an op (or a custom Function, through ``ctx.save_for_backward``)
   keeps for its backward. ``torch.autograd.graph.saved_tensors_hooks`` calls a *pack* hook on each of them as it
   is saved; `SavedTensorMeter` records the underlying storage of each one. Counting storages, not tensors, is what
   makes the number real: a view, a transpose or the same tensor saved by three ops costs its storage once.
   Gradient checkpointing shows up correctly: a checkpointed layer's inner saves go through the checkpoint's own
   hooks (they are replaced by placeholders and recomputed), so only the layer's saved *input* reaches ours.
2. **Attributes of custom autograd Functions** — a Function may keep tensors as plain ``ctx`` attributes instead
   of saving them (minilora's offloaded checkpoint keeps the layer input in CPU memory in ``ctx.saved``; the fused
   linear + cross-entropy keeps its already computed gradients). Hooks never see those. `function_held_bytes`
   walks the autograd graph from the loss and adds them up, by Function.

What a piece of code *allocates* (rather than saves) is the other question: `AllocationLog` records every new
tensor PyTorch ops return inside it, with its shape and bytes — an in-place op's result shares its input's memory
and is not new. It shows, for example, whether a backward builds dx in one buffer or in many.

Parameters and buffers of the model are excluded (they are weights, alive anyway); so is anything counted once
already. The meter works on any device, so the lesson can measure activation memory on a laptop CPU::

    report = measure_activations(model, lambda: model(ids, labels=ids))
    report.loss.backward()
    report.saved, report.held  # bytes saved for backward; {Function name: bytes} kept by custom Functions
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..linear4bit import QuantizedLinear

__all__ = ["ActivationReport", "AllocationLog", "AllocatorPeak", "SavedTensorMeter", "function_held_bytes", "measure_activations",
           "measure_model_bytes", "measure_training_bytes", "module_storage_keys", "peak_memory_gib", "storage_key"]


def storage_key(t: torch.Tensor) -> tuple:
    """Identifies the memory a tensor lives in: views and aliases of one storage share a key."""
    storage = t.untyped_storage()
    return (t.device.type, t.device.index, storage.data_ptr(), storage.nbytes())


def module_storage_keys(*modules: nn.Module) -> set:
    """Storage keys of every parameter and buffer of `modules` (the weights: excluded from activations)."""
    keys = set()
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected nn.Module objects whose weights to exclude, got {type(module).__name__}")
        for t in list(module.parameters()) + list(module.buffers()):
            keys.add(storage_key(t))
    return keys


def _identity(t):
    return t


class SavedTensorMeter:
    """Context manager: bytes of the distinct storages autograd saves for backward while it is active.

    ``with SavedTensorMeter(model) as meter: loss = model(ids, labels=ids).loss`` then ``meter.bytes``.
    Tensors stored in the parameters and buffers of the modules passed in are not counted.
    """

    def __init__(self, *exclude: nn.Module):
        self.excluded = module_storage_keys(*exclude)
        self.storages: dict[tuple, int] = {}  # storage key -> bytes
        self.saves = 0  # how many tensors were saved (before de-duplication)
        self._hooks = None

    def _pack(self, t: torch.Tensor):
        self.saves += 1
        key = storage_key(t)
        if key not in self.excluded:
            self.storages.setdefault(key, key[3])
        return t  # keep the tensor itself: the measurement must not change what the backward sees

    def __enter__(self) -> "SavedTensorMeter":
        if self._hooks is not None:
            raise RuntimeError("this SavedTensorMeter is already active: use a new one for each measurement")
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _identity)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def bytes_by_device(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (dev_type, dev_index, _, _), n in self.storages.items():
            name = dev_type if dev_index is None else f"{dev_type}:{dev_index}"
            out[name] = out.get(name, 0) + n
        return out


def _tensors_in(value, depth: int = 0) -> Iterable[torch.Tensor]:
    """Tensors in a ctx attribute: the value itself, inside tuples/lists, or inside a small holder object (the
    offloaded checkpoint keeps its CPU copy in one); modules are weights, not activations, and are skipped."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth >= 3 or isinstance(value, nn.Module):
        return
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for v in vars(value).values():
            yield from _tensors_in(v, depth + 1)


def function_held_bytes(output: torch.Tensor, exclude: set | None = None) -> dict[str, int]:
    """Bytes of tensors that custom autograd Functions in `output`'s graph keep as ``ctx`` attributes.

    Returns {Function backward-node name: bytes}, de-duplicated by storage across the whole graph; storages whose
    key is in `exclude` (weights, tensors already counted) are skipped. Modules kept on a ctx are not looked into.
    """
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"function_held_bytes needs the output tensor (e.g. the loss), got {type(output).__name__}")
    seen_keys = set(exclude or ())
    held: dict[str, int] = {}
    seen_nodes, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        attrs = getattr(node, "__dict__", None)  # only Python-defined Functions carry a __dict__
        if attrs:
            for value in attrs.values():
                if hasattr(value, "offloaded_bytes"):  # an offload store's handle: its pieces sit in shared slabs
                    if ("handle", id(value)) not in seen_keys:  # (the next layer's Function refers to it too)
                        seen_keys.add(("handle", id(value)))
                        name = type(node).__name__
                        held[name] = held.get(name, 0) + value.offloaded_bytes()
                    continue
                for t in _tensors_in(value):
                    key = storage_key(t)
                    if key not in seen_keys:
                        seen_keys.add(key)
                        name = type(node).__name__
                        held[name] = held.get(name, 0) + key[3]
        stack.extend(fn for fn, _ in node.next_functions)
    return held


@dataclass
class ActivationReport:
    """What one forward pass keeps for its backward. `loss` is the forward's loss: call .backward() on it."""
    saved: int  # bytes of distinct storages saved through autograd (saved-tensor hooks)
    held: dict[str, int] = field(default_factory=dict)  # {custom Function: bytes kept as ctx attributes}
    saves: int = 0  # tensors saved, counting repeats
    loss: torch.Tensor | None = None

    @property
    def total(self) -> int:
        return self.saved + sum(self.held.values())


def measure_activations(model: nn.Module, forward: Callable[[], object]) -> ActivationReport:
    """Run ``forward()`` (which must return a tensor loss or an output with ``.loss``) and measure what it keeps.

    The model's own parameters and buffers are excluded. Call ``report.loss.backward()`` afterwards to train.
    """
    with SavedTensorMeter(model) as meter:
        out = forward()
    loss = out if isinstance(out, torch.Tensor) else getattr(out, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise ValueError("forward() must return a loss that needs a gradient (a tensor or an output with .loss): "
                         "pass labels, put the model in train mode and make sure some parameter requires grad")
    held = function_held_bytes(loss, exclude=set(meter.storages) | meter.excluded)
    return ActivationReport(saved=meter.bytes, held=held, saves=meter.saves, loss=loss)


# --- the tensors of a model and of one training step ------------------------------------------------------------
def _unique(tensors):
    seen = {}
    for t in tensors:
        if t is not None:
            seen.setdefault((t.untyped_storage().data_ptr(), t.dtype, t.numel()), t)
    return seen.values()


def measure_model_bytes(model: nn.Module) -> dict:
    """Bytes of a model's tensors by role: frozen weights (incl. NF4 state), trainable parameters, buffers.

    Tied weights count once. `quant_state` is the part of the buffers that belongs to quantized layers (Linear4bit's
    absmax, Linear8bit's row scales and outlier columns)."""
    params = list(_unique(model.parameters()))
    q_state = sum(b.numel() * b.element_size() for m in model.modules() if isinstance(m, QuantizedLinear)
                  for b in m.buffers(recurse=False))
    buffers = sum(b.numel() * b.element_size() for b in _unique(model.buffers()))
    return {"frozen": sum(p.numel() * p.element_size() for p in params if not p.requires_grad),
            "trainable": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
            "quant_state": q_state, "other_buffers": buffers - q_state}


def measure_training_bytes(model: nn.Module, input_ids: torch.Tensor, optimizer_cls=torch.optim.AdamW) -> dict:
    """Run one training step and count: gradients, optimizer state and the bytes saved for backward."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer_cls(trainable, lr=1e-4)
    with SavedTensorMeter(model) as meter:
        loss = model(input_ids, labels=input_ids).loss
    loss.backward()
    opt.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    states = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.dim() > 0)  # the step counters are scalars
    opt.zero_grad(set_to_none=True)
    return {"gradients": grads, "optimizer": states, "activations": meter.bytes}


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or on CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class AllocationLog(TorchDispatchMode):
    """Inside ``with AllocationLog() as log:``, every new tensor a PyTorch op returns: ``log.shapes`` (in order)
    and ``log.bytes`` (their storages' total). Results that share memory with an input (in-place ops, views) are
    not new and are left out. Triton kernels do not pass through PyTorch's dispatcher (they allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple] = []
        self.allocations: list[tuple] = []  # (op name, shape, dtype) of each new tensor, in order
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.shapes.append(tuple(t.shape))
                self.allocations.append((str(func.overloadpacket.__name__), tuple(t.shape), t.dtype))
                self.bytes += t.untyped_storage().nbytes()
        return out


class AllocatorPeak:
    """The CPU allocator's peak inside ``with AllocatorPeak() as meter:`` — ``meter.peak`` bytes above what was
    allocated when it started (``meter.end``: still allocated at the end). What `torch.cuda.max_memory_allocated`
    gives on a GPU, for a CPU: torch.profiler records every allocation and free of the CPU allocator with its
    size, and their running sum in time order is the allocated total. (Profiling slows the code it watches.)"""

    def __init__(self):
        self.peak = self.end = 0
        self._profile = None

    def __enter__(self) -> "AllocatorPeak":
        from torch.profiler import ProfilerActivity, profile
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._profile.__exit__(*exc)
        live = peak = 0
        # an op's allocations are counted when it starts, frees ("[memory]" events) when they happen
        for event in sorted(self._profile.events(), key=lambda e: e.time_range.start):
            live += event.self_cpu_memory_usage
            peak = max(peak, live)
        self.peak, self.end = peak, live

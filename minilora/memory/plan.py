"""A memory budget for gradient checkpointing: per decoder layer, keep everything, keep the input only (recompute),
or keep nothing on the device (offload) — the fastest mix whose predicted peak fits the budget.

Why per layer: recomputing a layer costs one more forward of it, offloading costs that plus a copy over PCIe that
overlaps the work; keeping a layer costs its whole set of saved activations. Every decoder layer of a model costs
the same, so the fastest plan that fits keeps as many layers as the budget allows and recomputes (or, if memory is
still short, offloads) the rest.

The prediction, per layer for `tokens` tokens (B·T), bytes on the device (`layer_bytes`):

    keep        everything the layer saves for its backward (below)
    recompute   its input (B, T, C) only — the layer's full set lives again while its backward runs
    offload     nothing (the input waits in pinned host memory) — on a CPU "offloading" copies within the same
                memory, so there it costs what recompute costs

What one layer saves (activation dtype a bytes; C hidden, q = heads·hd, kv = kv_heads·hd, I intermediate, r rank):

    fast path (CUDA: the fast-LoRA Functions + Triton kernels + flash/cuDNN attention), per token:
      2 RMSNorms: input and normalized output, 4·C values, + 2 float32 reciprocal RMS
      attention:  q, k, v after RoPE and SDPA's output (o_proj's input is a view of it), 2q + 2kv values,
                  + one float32 log-sum-exp per head
      MLP:        gate and up outputs, 2·I values;   LoRA: x·Aᵀ of every projection, 7·r values
    reference path (plain PyTorch ops, the CPU's): also silu(gate) and the SwiGLU product (4·I), the RMSNorms'
      float32 inputs, float32 casts for float32 adapters (`_reference_keep`)

    per layer, not per token: LoRA's A and B cast to the activation dtype (when the adapters are float32), saved
    by the fast-LoRA Functions so the backward need not cast them again

and the peak (`predict_peak`) is the largest of: the end of the forward (everything kept + the loss's share),
and each layer's backward (the layers before it still hold their share; this layer's whole set is alive again;
its backward's workspace: gradient buffers of (tokens, I) and (tokens, C), one dequantized weight) — on top of the
static bytes: weights, quantization state, adapters, their gradients, the optimizer state, the batch.

`CheckpointPlanner` is what ``use_gradient_checkpointing="auto"`` puts on the model: at the first training
forward of a batch shape it measures the model's static bytes, asks the device what is free, plans, and caches the
plan (a later, smaller batch reuses it; a larger one is planned anew). Plan before training with
`CheckpointPlanner.prepare(batch, seq)` to have a too-small budget refused before any step runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import ops
from ..linear4bit import Linear4bit
from ..lora import lora_layers
from ..models.config import ModelConfig
from .estimate import (
    GiB,
    adamw8bit_state_bytes,
    block_linear_shapes,
    dtype_bytes,
    estimate_memory,
    lora_param_count,
    trainable_tensor_sizes,
)
from .measure import storage_key

__all__ = ["CheckpointPlan", "CheckpointPlanner", "plan_for_config", "LayerBytes", "MemoryBudgetError", "PLAN_MODES", "available_bytes",
           "default_margin", "head_bytes", "layer_bytes", "parse_memory_budget", "plan_checkpointing",
           "predict_peak", "resolve_budget", "static_bytes"]

PLAN_MODES = ("keep", "recompute", "offload")
MODEL_MODE = {"keep": False, "recompute": True, "offload": "offload"}  # what run_layers takes
OFFLOAD_COST = 1.05  # a recomputed layer's forward = 1; offloading adds a host copy that mostly overlaps the work
F32 = 4


class MemoryBudgetError(ValueError):
    """The budget is smaller than the leanest plan (every layer offloaded) needs; `.smallest` is what would fit."""

    def __init__(self, message: str, smallest: int):
        super().__init__(message)
        self.smallest = smallest


# --- what one layer holds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerBytes:
    """Bytes of ONE decoder layer, for one batch shape, on the device."""
    keep: int  # everything it saves for backward
    recompute: int  # its input only
    offload: int  # 0 on a GPU; its input on a CPU (the "offloaded" copy stays in the same memory)
    workspace: int  # its backward's own buffers on top of its saved set

    def held(self, mode: str) -> int:
        return getattr(self, mode)


def _fast_keep(config: ModelConfig, a: int, r: int, adapter: int) -> tuple[int, int]:
    """(bytes per token, float32 bytes per token) a layer saves on the fast path."""
    C, I = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    values = 4 * C + 2 * q + 2 * kv + 2 * I + 7 * r
    return values * a, (2 + config.num_attention_heads) * F32


def _reference_keep(config: ModelConfig, a: int, r: int, adapter: int) -> tuple[int, int]:
    """(bytes per token, float32 bytes per token) a layer saves with the plain PyTorch ops (the CPU's path).

    As the fast path, except: the RMSNorms keep their float32 input (for 16-bit activations a float32 copy);
    the MLP keeps silu(gate) and the product h as well (4·I instead of 2·I); LoRA with float32 adapters on 16-bit
    activations casts every projection's input to float32 (the q/k/v, o, gate/up and down inputs) and keeps
    x·Aᵀ in float32."""
    C, I = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    per_token = 2 * C * (F32 + a) + (2 * q + 2 * kv + 4 * I) * a + 7 * r * adapter
    if adapter != a:
        per_token += (3 * C + q + 2 * C + I) * adapter
    return per_token, (2 + config.num_attention_heads) * F32


def layer_bytes(config: ModelConfig, tokens: int, *, dtype=torch.bfloat16, fast: bool = True, r: int = 16,
                adapter_dtype=torch.float32, offload_frees: bool = True, nf4: bool = True) -> LayerBytes:
    """What one decoder layer holds for `tokens` tokens under each mode (see the module docstring).

    fast: the fast path (CUDA kernels) or the reference ops; offload_frees: False on a CPU, where an offloaded
    input stays in the same memory; nf4: the base weights are dequantized just in time in the backward (one dense
    weight on top of the workspace)."""
    a = dtype_bytes(dtype)
    per_token, per_token_f32 = (_fast_keep if fast else _reference_keep)(config, a, r, dtype_bytes(adapter_dtype))
    C, I = config.hidden_size, config.intermediate_size
    # fast LoRA saves bf16 copies of float32 adapters, one set per layer
    casts = lora_param_count(config, r) // config.num_hidden_layers * a if (fast and dtype_bytes(adapter_dtype) != a) else 0
    keep = tokens * (per_token + per_token_f32) + casts
    layer_input = tokens * C * a
    biggest_weight = max(o * i for o, i in block_linear_shapes(config).values()) * a if nf4 else 0
    # the MLP's backward: a (tokens, I) buffer for the gradient of h, one (tokens, C) for dx, a dequantized weight
    workspace = tokens * (I + C) * a + biggest_weight
    return LayerBytes(keep=keep, recompute=layer_input, offload=0 if offload_frees else layer_input,
                      workspace=workspace)


def head_bytes(config: ModelConfig, tokens: int, batch: int, *, dtype=torch.bfloat16, fused_loss: bool = True,
               chunk_bytes: int = 64 * 2**20) -> tuple[int, int]:
    """(held, transient) bytes of the part after the layers: the final norm keeps its input (and, unfused, the head
    its input and the logits); the fused loss computes d(hidden) in the forward and keeps it; the transient is the
    loss's working buffer (one chunk of logits, or float32 copies of all of them). Plus RoPE's cos/sin tables."""
    a = dtype_bytes(dtype)
    C, V, hd = config.hidden_size, config.vocab_size, config.head_dim
    rope_tables = 2 * tokens * hd * a
    norm = tokens * C * a + tokens * F32
    if fused_loss:
        return norm + (tokens - batch) * C * a + rope_tables, min(chunk_bytes, tokens * V * a)
    return norm + tokens * C * a + tokens * V * a + rope_tables, 2 * tokens * V * F32


def predict_peak(static: int, layer: LayerBytes, modes, head: tuple[int, int], tokens_c_bytes: int) -> int:
    """The largest allocated total over one step for per-layer `modes` (see the module docstring).
    tokens_c_bytes: one (tokens, C) tensor — the gradient that flows from layer to layer in the backward."""
    held = [layer.held(m) for m in modes]
    head_held, head_transient = head
    forward_end = static + sum(held) + head_held + head_transient
    peak, below = forward_end, 0
    for i, mode in enumerate(modes):
        # backward of layer i: layers < i still hold theirs; this one's full set is alive (recomputed or kept);
        # its workspace; the incoming gradient and the one being built; an offloaded layer also has the input of
        # the offloaded layer before it on the way back (prefetched)
        prefetch = layer.recompute if (mode == "offload" and layer.offload == 0 and i > 0 and
                                       modes[i - 1] == "offload") else 0
        live = static + below + layer.keep + layer.workspace + 2 * tokens_c_bytes + prefetch + head_held
        peak = max(peak, live)
        below += held[i]
    return peak


# --- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class CheckpointPlan:
    modes: list  # one of PLAN_MODES per layer
    predicted_peak: int  # bytes
    budget: int  # bytes
    static: int  # bytes of weights, adapters, gradients, optimizer state, batch
    layer: LayerBytes
    relative_time: float  # recomputed layer forwards added to the step (offload weighs OFFLOAD_COST)
    batch: int = 0
    seq: int = 0
    candidates: list = field(default_factory=list, repr=False)  # (keep, offload, peak) of every plan considered

    @property
    def model_modes(self) -> list:
        """The per-layer list `model.gradient_checkpointing` takes (False / True / "offload")."""
        return [MODEL_MODE[m] for m in self.modes]

    def counts(self) -> dict:
        return {m: self.modes.count(m) for m in PLAN_MODES}

    def summary(self) -> str:
        c = self.counts()
        return (f"checkpointing plan for B{self.batch} S{self.seq}: keep {c['keep']}, recompute {c['recompute']}, "
                f"offload {c['offload']} of {len(self.modes)} layers; predicted peak "
                f"{self.predicted_peak / GiB:.2f} GiB of a {self.budget / GiB:.2f} GiB budget")


def _modes(n_layers: int, keep: int, offload: int) -> list:
    """Offloaded layers first, kept layers last: at the backward of the last layer (the peak) nothing else is
    alive yet, and the layers before a kept one hold the least they can."""
    return ["offload"] * offload + ["recompute"] * (n_layers - keep - offload) + ["keep"] * keep


def plan_checkpointing(n_layers: int, layer: LayerBytes, static: int, head: tuple[int, int], budget: int,
                       tokens_c_bytes: int, batch: int = 0, seq: int = 0) -> CheckpointPlan:
    """The fastest per-layer plan whose predicted peak fits `budget`; MemoryBudgetError when none does."""
    best = None
    candidates = []
    offload_useful = layer.offload < layer.recompute
    for keep in range(n_layers, -1, -1):
        rest = n_layers - keep
        for offload in range(0, (rest if offload_useful else 0) + 1):  # fewest offloads that fit, for this keep
            modes = _modes(n_layers, keep, offload)
            peak = predict_peak(static, layer, modes, head, tokens_c_bytes)
            candidates.append((keep, offload, peak))
            if peak <= budget:
                time = (rest - offload) + OFFLOAD_COST * offload
                if best is None or time < best[0]:
                    best = (time, modes, peak)
                break
    if best is None:
        leanest = min(c[2] for c in candidates)
        raise MemoryBudgetError(
            f"a memory budget of {budget / GiB:.2f} GiB cannot train B{batch} S{seq}: even with every layer "
            f"{'offloaded' if offload_useful else 'recomputed'} the step needs {leanest / GiB:.2f} GiB "
            f"(weights, adapters, optimizer state and one layer's activations). Give a budget of at least "
            f"{math.ceil(leanest / GiB * 100) / 100:.2f} GiB, or a shorter sequence / smaller batch", leanest)
    time, modes, peak = best
    return CheckpointPlan(modes, peak, budget, static, layer, time, batch, seq, candidates)


# --- the budget --------------------------------------------------------------------------------------------------
def parse_memory_budget(value):
    """A budget as the user gives it: a number of GiB (20, "20", "20GiB") or a share of the memory available to
    the model ("90%"). Returns ("gib", float) or ("fraction", float in (0, 1]); None stays None (the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"memory_budget={value!r}: give GiB as a number (e.g. 20) or a share as a string ('90%')")
    text = str(value).strip().lower()
    kind = "fraction" if text.endswith("%") else "gib"
    text = text.removesuffix("%").removesuffix("gib").strip()
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"memory_budget={value!r}: give GiB as a number (e.g. 20) or a share as a string "
                         "('90%')") from None
    if not math.isfinite(number) or number <= 0 or (kind == "fraction" and number > 100):
        raise ValueError(f"memory_budget={value!r}: must be a positive number of GiB, or a share in (0%, 100%]")
    return (kind, number / 100) if kind == "fraction" else (kind, number)


def default_margin(available: int) -> int:
    """Room left out of the default budget: 10% of what is available, at least 1 GiB — for the caching
    allocator's fragmentation and the prediction's own error (it is checked to 10% on the recorded shapes)."""
    return max(GiB, available // 10)


def available_bytes(device: torch.device, model_bytes: int = 0) -> int:
    """Memory this model may use on `device`: what is free, what PyTorch's cache holds unused, and the model's own
    tensors already there. On a CPU: the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached + model_bytes
    from ..models.offload_store import host_available_bytes
    return (host_available_bytes() or 0) + model_bytes


def resolve_budget(memory_budget, available: int) -> int:
    """Bytes of the budget: GiB as given, a share of `available`, or (None) available minus `default_margin`."""
    parsed = parse_memory_budget(memory_budget)
    if parsed is None:
        return available - default_margin(available)
    kind, number = parsed
    return int(number * GiB) if kind == "gib" else int(number * available)


# --- the static bytes of a real model -------------------------------------------------------------------------------
def _model_tensors(model) -> tuple[int, int, list]:
    """(bytes of every parameter and buffer, bytes of trainable parameters, numel of each trainable tensor)."""
    seen, total, trainable, sizes = set(), 0, 0, []
    for t in list(model.parameters()) + list(model.buffers()):
        key = storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        total += key[-1]
        if t.requires_grad:
            trainable += t.numel() * t.element_size()
            sizes.append(t.numel())
    return total, trainable, sizes


def static_bytes(model, batch: int, seq: int, optim: str = "adamw") -> tuple[int, int]:
    """(static bytes of training this model, bytes of its tensors now): weights and buffers, one gradient per
    trainable parameter, the optimizer state ("adamw": two moments in the parameter's dtype; "adamw_8bit"), the
    batch (input ids and labels, int64)."""
    tensors, trainable, sizes = _model_tensors(model)
    if optim in ("adamw", "adamw_torch"):
        state = 2 * trainable
    elif optim == "adamw_8bit":
        state = sum(adamw8bit_state_bytes(n) for n in sizes)
    elif optim == "sgd":
        state = 0
    else:
        raise ValueError(f"optim={optim!r}: the planner knows adamw, adamw_torch, adamw_8bit and sgd")
    return tensors + trainable + state + 2 * batch * seq * 8, tensors


def plan_for_config(config: ModelConfig, batch: int, seq: int, budget: int, *, method: str = "qlora", r: int = 16,
                    dtype=torch.bfloat16, optim: str = "adamw", fast: bool = True, fused_loss: bool = True,
                    on_gpu: bool = True) -> CheckpointPlan:
    """The plan for a model that is not loaded yet, from its config alone: the static bytes come from
    `estimate_memory` (weights, NF4 state, adapters, gradients, optimizer state) instead of the real tensors —
    so a budget that cannot fit is refused before anything is loaded. budget in bytes."""
    e = estimate_memory(config, method, r=r, dtype=dtype, batch_size=batch, seq_len=seq)
    optimizer = e.optimizer
    if optim == "adamw_8bit":
        optimizer = sum(adamw8bit_state_bytes(n) for n in trainable_tensor_sizes(config, "lora", r))
    static = e.weights + e.quant_state + e.adapter + e.gradients + optimizer + 2 * batch * seq * 8
    tokens = batch * seq
    adapter = torch.float32 if method == "qlora" else dtype
    layer = layer_bytes(config, tokens, dtype=dtype, fast=fast, r=r, adapter_dtype=adapter, offload_frees=on_gpu,
                        nf4=method == "qlora")
    head = head_bytes(config, tokens, batch, dtype=dtype, fused_loss=fused_loss)
    return plan_checkpointing(config.num_hidden_layers, layer, static, head, budget,
                              tokens * config.hidden_size * dtype_bytes(dtype), batch, seq)


class CheckpointPlanner:
    """``model.gradient_checkpointing`` under "auto": plans the layers' modes at the first training forward of a
    batch shape (see the module docstring). ``optim`` is the optimizer the trainer will build (its state counts).
    ``log``: called with the plan's summary each time one is made."""

    def __init__(self, model, memory_budget=None, optim: str = "adamw", fused_loss: bool = True, log=None):
        parse_memory_budget(memory_budget)  # a bad budget is refused now, not at the first step
        self.model = model  # a plain reference: a deep copy of the model gets a planner of its own copy
        self.memory_budget, self.optim, self.fused_loss, self.log = memory_budget, optim, fused_loss, log
        self.plan: CheckpointPlan | None = None

    def __repr__(self) -> str:
        return f"CheckpointPlanner(memory_budget={self.memory_budget!r}, plan={self.plan.counts() if self.plan else None})"

    def prepare(self, batch: int, seq: int, device=None, fast: bool | None = None) -> CheckpointPlan:
        """Plan for batches of up to batch × seq tokens now (refusing a budget that cannot fit before training)."""
        model = self.model
        if not (isinstance(batch, int) and isinstance(seq, int) and batch > 0 and seq > 0):
            raise ValueError(f"batch={batch!r}, seq={seq!r}: both must be positive integers")
        param = next(model.parameters())
        device = torch.device(device) if device is not None else param.device
        dtype = model.model.embed_tokens.weight.dtype
        if fast is None:
            fast = ops.fast_lora_on(torch.empty(0, device=device, dtype=dtype))
        config = model.config
        static, tensors = static_bytes(model, batch, seq, self.optim)
        budget = resolve_budget(self.memory_budget, available_bytes(device, tensors))
        tokens = batch * seq
        adapter = next((p.dtype for p in model.parameters() if p.requires_grad), dtype)
        nf4 = any(isinstance(m, Linear4bit) for m in model.modules())
        layer = layer_bytes(config, tokens, dtype=dtype, fast=fast, r=_lora_rank(model), adapter_dtype=adapter,
                            offload_frees=device.type == "cuda", nf4=nf4)
        head = head_bytes(config, tokens, batch, dtype=dtype, fused_loss=self.fused_loss)
        self.plan = plan_checkpointing(config.num_hidden_layers, layer, static, head, budget,
                                       tokens * config.hidden_size * dtype_bytes(dtype), batch, seq)
        if self.log:
            self.log(self.plan.summary())
        return self.plan

    def layer_modes(self, x: torch.Tensor, num_layers: int) -> list:
        """The per-layer modes for the hidden states x (B, T, C) entering the first layer."""
        B, T = x.shape[0], x.shape[1]
        if self.plan is None or B * T > self.plan.batch * self.plan.seq:
            self.prepare(B, T, x.device)
        if len(self.plan.modes) != num_layers:
            raise ValueError(f"the plan covers {len(self.plan.modes)} layers, the model runs {num_layers}")
        return self.plan.model_modes


def _lora_rank(model) -> int:
    return max((layer.r for _, layer in lora_layers(model)), default=0)

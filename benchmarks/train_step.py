"""One LoRA/QLoRA training step as a callable the harness can time, for minilora's ladder stages.

A `Step` owns its model, optimizer and batch, so several stacks can live side by side in one process and be timed
in alternation. Its `resident_bytes` is what the stack keeps allocated between steps (weights, quantization state,
adapters, AdamW moments, the batch), measured as the growth of allocated memory across building it and running
one step; a row's peak is then that plus the step's own peak above it — the figure a process holding only this
stack would report with `torch.cuda.max_memory_allocated()`.

The ladder (each stage keeps everything before it and adds one technique):
  0 lora-bf16    16-bit base, LoRA r16 on all 7 projections, plain PyTorch ops, recompute checkpointing
  1 + nf4        the frozen base in NF4 (QLoRA)
  2 + triton     Triton RoPE / SwiGLU / RMSNorm / cross-entropy and the fast-LoRA Functions
  3 + fused-ce   fused linear + cross-entropy: the (tokens × vocab) logits never exist at once
  4 + offload    checkpointed layer inputs kept in CPU memory
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from minilora import ops
from minilora.lora import get_peft_model
from minilora.models.checkpointing import check_mode
from minilora.models.config import ModelConfig
from minilora.models.registry import build_model, init_weights

STAGES = ["lora-bf16", "+ nf4", "+ triton", "+ fused-ce", "+ offload"]
GiB = 2**30


def allocated(device: str) -> int:
    """Bytes allocated on the device once its queued work is done (0 off a GPU)."""
    if not str(device).startswith("cuda"):
        return 0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


class Step:
    """One training step: forward with labels, backward, AdamW step, zero_grad. Never reads a value back to the
    host (no .item(), no printing), so the harness's CUDA events time the device work alone."""

    def __init__(self, name: str, model, device: str, batch: int, seq: int, *, kernels: str = "reference",
                 return_logits: bool = True, forward: Callable | None = None, seed: int = 0):
        self.name, self.model, self.device, self.kernels, self.return_logits = name, model, device, kernels, \
            return_logits
        self.forward = forward or (lambda x: model(x, labels=x, return_logits=return_logits).loss)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.seed = seed
        self.vocab = _vocab_size(model)
        self.set_batch(batch, seq)
        self.loss = None

    def set_batch(self, batch: int, seq: int) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self.batch, self.seq = batch, seq
        self.x = torch.randint(0, self.vocab, (batch, seq), generator=gen).to(self.device)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def __call__(self):
        self.loss = optimizer_step(self.forward, self.x, self.opt, self.kernels)

    def loss_value(self) -> float | None:
        return None if self.loss is None else float(self.loss)


def optimizer_step(forward, x, opt, kernels: str, context: Callable = contextlib.nullcontext) -> torch.Tensor:
    """One timed training step: forward and backward under the kernel mode (and ``context``), then the optimizer."""
    with ops.use_kernels(kernels), context():
        loss = forward(x)
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


class Variant:
    """Another setting of a built Step's model, timed as its own stack: shares the Step's model, optimizer and
    batch (so the stacks of one comparison differ only in the setting) and calls ``setup(step)`` before each step
    (set the checkpointing plan, turn HF's checkpointing off...). ``context`` (a callable returning a context
    manager) wraps the step, e.g. ``lambda: ops.without("rope")``. ``optimizer``: its own (e.g. 8-bit AdamW over
    the same parameters) instead of the Step's. Batch, tokens and resident bytes are the Step's."""

    def __init__(self, name: str, base: Step, setup: Callable | None = None, *, context: Callable | None = None,
                 return_logits: bool | None = None, optimizer=None):
        self.name, self.base, self.setup = name, base, setup
        self.context = context or contextlib.nullcontext
        self.opt = optimizer or base.opt
        if return_logits is None or return_logits == base.return_logits:
            self.forward = base.forward
        else:
            self.forward = lambda x: base.model(x, labels=x, return_logits=return_logits).loss
        self.loss = None

    def __call__(self):
        if self.setup is not None:
            self.setup(self.base)
        self.loss = optimizer_step(self.forward, self.base.x, self.opt, self.base.kernels, self.context)

    def set_batch(self, batch: int, seq: int) -> None:
        self.base.set_batch(batch, seq)

    @property
    def tokens(self) -> int:
        return self.base.tokens

    @property
    def resident_bytes(self) -> int:
        return self.base.resident_bytes

    loss_value = Step.loss_value


def _vocab_size(model) -> int:
    config = getattr(model, "config", None)
    return int(config.vocab_size)


def built(make: Callable[[], Step], device: str) -> Step:
    """Build a Step and run it once; its resident_bytes is the allocated memory that stays afterwards."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    before = allocated(device)
    step = make()
    step()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    step.resident_bytes = allocated(device) - before
    return step


def build_stage_model(config: ModelConfig, stage: int, device: str, dtype: torch.dtype, seed: int = 0):
    """A fresh random-weight model with everything of the ladder up to `stage` (0..4) that lives in the model: NF4
    weights from stage 1, LoRA r16 on the 7 projections, recompute checkpointing (offload from stage 4); train mode.
    The kernels (stage 2) and the fused loss (stage 3) are chosen per call: see `minilora_stage`."""
    torch.manual_seed(seed)
    model = build_model(config, dtype=dtype, device=device)
    init_weights(model, seed=seed)
    if stage >= 1:
        from minilora.linear4bit import quantize_model
        quantize_model(model, compute_dtype=dtype)
    get_peft_model(model, r=16, lora_alpha=16, verbose=False)
    model.gradient_checkpointing = check_mode("offload" if stage >= 4 else True)
    return model.train()


def minilora_stage(config: ModelConfig, stage: int, batch: int, seq: int, device: str, dtype: torch.dtype,
                   seed: int = 0) -> Step:
    """The ladder's stage `stage` (0..4) as a Step: a fresh random-weight model with everything up to that stage."""
    def make():
        model = build_stage_model(config, stage, device, dtype, seed)
        return Step(STAGES[stage], model, device, batch, seq, kernels="triton" if stage >= 2 else "reference",
                    return_logits=stage < 3, seed=seed)
    return built(make, device)


def checkpointing_mode(config: ModelConfig, mode, batch: int, seq: int, device: str, dtype: torch.dtype,
                       seed: int = 0) -> Step:
    """A 16-bit LoRA step with one gradient-checkpointing mode: False (keep everything), "recompute", "offload"."""
    def make():
        torch.manual_seed(seed)
        model = build_model(config, dtype=dtype, device=device)
        init_weights(model, seed=seed)
        get_peft_model(model, r=16, lora_alpha=16, verbose=False)
        model.gradient_checkpointing = check_mode(mode)
        model.train()
        return Step(f"checkpointing {mode if mode else 'off'}", model, device, batch, seq, seed=seed)
    return built(make, device)


def release(step: Step) -> None:
    """Drop a Step's tensors (and give cached blocks back) before building the next big one."""
    step.model = step.opt = step.x = step.loss = step.forward = None
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def model_flops_per_token(config: ModelConfig) -> float:
    """6·N: the usual model-FLOPs count of a training step per token (2N forward, 4N backward), N = every
    parameter of the model. LoRA skips the frozen weights' gradients and checkpointing adds a forward, so the
    FLOPs actually executed differ; the convention keeps utilisation comparable across stacks."""
    from minilora.memory import param_counts
    return 6.0 * param_counts(config)["total"]


def add_resident(row: dict, resident_bytes: int, device: str) -> None:
    """A row's peak as a process holding only this stack would report it: the step's own peak (measured above what
    the stack keeps allocated between steps, kept as ``step_peak_gib``) plus those resident bytes."""
    row["resident_gib"] = resident_bytes / GiB if str(device).startswith("cuda") else None
    if row["peak_gib"] is not None:
        row["step_peak_gib"] = row["peak_gib"]
        row["peak_gib"] += row["resident_gib"]


def add_throughput(row: dict, tokens: int, flops_per_token: float, peak_tflops: float | None) -> None:
    """tokens/s and model-FLOPs utilisation (against peak_tflops) from a row's median step time."""
    if not row["reps"]:
        return
    seconds = row["median_ms"] / 1e3
    row["tokens"] = tokens
    row["tok_s"] = tokens / seconds
    row["tok_s_range"] = [tokens / (row["max_ms"] / 1e3), tokens / (row["min_ms"] / 1e3)]
    row["model_tflops"] = flops_per_token * tokens / seconds / 1e12
    row["mfu"] = row["model_tflops"] / peak_tflops if peak_tflops else None

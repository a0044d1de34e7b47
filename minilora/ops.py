"""The one decision point that chooses how ops run.

- ``triton``: the Triton kernels (compiled on CUDA; through the interpreter when ``TRITON_INTERPRET=1`` was set
  before Triton was first imported — that is how tests and kernel lessons run them on a laptop);
- ``reference``: the plain-PyTorch references (fast and exact on CPU);
- ``auto`` (default): Triton for CUDA tensors, the references otherwise.

Set it with the ``MINILORA_KERNELS`` environment variable or ``use_kernels("reference")`` (also a context manager).
Model code calls the functions below and never checks devices itself; the kernels below never look at the switch:
each op here asks `use_triton` once and calls either the reference or the Triton path of its kernel file.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from .kernels import IGNORE_INDEX
from .kernels._triton import host_checks, interpreter_on
from .kernels.cross_entropy import cross_entropy_reference, first_out_of_range
from .kernels.fast_lora import Kernels, LoraWeights, apply_lora_mlp, apply_lora_projections
from .kernels.fused_linear_ce import fused_linear_cross_entropy_reference
from .kernels.rmsnorm import rms_norm_reference
from .kernels.rope import rope_reference
from .kernels.segment_attention import (  # noqa: F401 - PackedSegments, positions_from_segments: for the models
    PackedSegments,
    check_segment_ids,
    positions_from_segments,
    segment_attention_reference,
)
from .kernels.swiglu import geglu_reference, swiglu_reference
from .quant.blockwise import NF4State, dequantize_nf4_reference

MODES = ("auto", "triton", "reference")
_mode = os.environ.get("MINILORA_KERNELS", "auto")
# Single fast paths that can be switched off alone (the others stay on) — to measure what each one buys.
FAST_PATHS = ("nf4_dequant", "lora_mlp", "lora_qkv", "rope", "swiglu", "rmsnorm")
_off: frozenset = frozenset()


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}: choose one of {', '.join(MODES)} "
                         "(set MINILORA_KERNELS or call minilora.ops.use_kernels)")
    return mode


_check_mode(_mode)


def kernel_mode() -> str:
    return _mode


@contextlib.contextmanager
def _restore(previous: str):
    global _mode
    try:
        yield
    finally:
        _mode = previous


def use_kernels(mode: str):
    """Switch how ops run. Works as a plain call or as ``with use_kernels("reference"): ...``."""
    global _mode
    previous, _mode = _mode, _check_mode(mode)
    return _restore(previous)


@contextlib.contextmanager
def without(*names: str):
    """``with without("rope"): ...`` — the named fast paths (FAST_PATHS) take their PyTorch route inside:
    "nf4_dequant" the dequantization, "lora_mlp" / "lora_qkv" the fused LoRA Functions of the MLP / of the
    attention's q, k, v and o projections (the layers then run one by one), "rope", "swiglu" (also the step inside
    the fused LoRA MLP), "rmsnorm"."""
    global _off
    unknown = [n for n in names if n not in FAST_PATHS]
    if unknown:
        raise ValueError(f"unknown fast path(s) {unknown}: choose from {', '.join(FAST_PATHS)}")
    previous, _off = _off, _off | frozenset(names)
    try:
        yield
    finally:
        _off = previous


def _on(name: str, x: torch.Tensor) -> bool:
    return name not in _off and use_triton(x)


def use_triton(x: torch.Tensor) -> bool:
    """True when the Triton path should run for a tensor on x's device."""
    if _mode == "reference":
        return False
    if _mode == "auto":
        return x.is_cuda
    if not x.is_cuda and not interpreter_on():
        raise RuntimeError("kernel mode 'triton' on a CPU tensor needs the Triton interpreter: set "
                           "TRITON_INTERPRET=1 before importing minilora, or use kernel mode 'auto'/'reference'")
    return True


# ---------------------------------------------------------------------------------------------------------------
# Attention: PyTorch's SDPA, optionally with cuDNN's kernels tried first on Hopper
# ---------------------------------------------------------------------------------------------------------------
SDPA_PREFERENCES = ("pytorch", "cudnn-first")
_sdpa_preference = os.environ.get("MINILORA_SDPA", "pytorch")


def sdpa_preference() -> str:
    return _sdpa_preference


def prefer_sdpa(preference: str) -> None:
    """"pytorch" (the default): SDPA's own order (FlashAttention-2 first on a GPU). "cudnn-first": on a Hopper GPU
    (compute capability 9.x) SDPA tries cuDNN's attention first; others report it markedly faster there for
    training shapes, and `python -m benchmarks.ctx_mem --attention` measures both on the card at hand. Either way a
    shape one kernel cannot serve falls back to the next."""
    global _sdpa_preference
    if preference not in SDPA_PREFERENCES:
        raise ValueError(f"unknown attention preference {preference!r}: choose one of {', '.join(SDPA_PREFERENCES)} "
                         "(set MINILORA_SDPA or call minilora.ops.prefer_sdpa)")
    _sdpa_preference = preference


prefer_sdpa(_sdpa_preference)


def _cudnn_first(q: torch.Tensor) -> bool:
    return _sdpa_preference == "cudnn-first" and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9


def attention(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False) -> torch.Tensor:
    """scaled_dot_product_attention(q, k, v): q (B, nh, T, hd), k and v (B, nkv, S, hd) → (B, nh, T, hd)."""
    extra = {"enable_gqa": True} if enable_gqa else {}
    if not _cudnn_first(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **extra)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **extra)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q (B, n_head, T, hd) and k (B, n_kv, T, hd) by cos/sin (B or 1, T, hd) or (T, hd)."""
    if _on("rope", q):
        from .kernels.rope import rope_fast
        return rope_fast(q, k, cos, sin)
    return rope_reference(q, k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if _on("swiglu", gate):
        from .kernels.swiglu import swiglu_fast
        return swiglu_fast(gate, up)
    return swiglu_reference(gate, up)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if use_triton(gate):
        from .kernels.swiglu import geglu_fast
        return geglu_fast(gate, up, approximate)
    return geglu_reference(gate, up, approximate)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _on("rmsnorm", x):
        from .kernels.rmsnorm import rms_norm_fast
        return rms_norm_fast(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, num_items=None,
                  logit_scale: float | None = None, softcap: float | None = None, *,
                  inplace_grad: bool = True) -> torch.Tensor:
    """Sum of token losses over non-ignored labels divided by ``num_items`` (default: their count).

    The Triton path writes the gradient into ``logits`` during backward unless ``inplace_grad=False``.
    """
    if use_triton(logits):
        from .kernels.cross_entropy import cross_entropy_fast
        return cross_entropy_fast(logits, labels, ignore_index, num_items, logit_scale, softcap,
                                  inplace_grad=inplace_grad)
    return cross_entropy_reference(logits, labels, ignore_index, num_items, logit_scale, softcap)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = IGNORE_INDEX, num_items=None, logit_scale: float | None = None,
                               softcap: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """cross_entropy(hidden (N, H) @ weight (V, H).T + bias, labels); the Triton path never holds all logits."""
    if use_triton(hidden):
        from .kernels.fused_linear_ce import fused_linear_cross_entropy_fast
        return fused_linear_cross_entropy_fast(hidden, weight, labels, ignore_index, num_items, logit_scale,
                                               softcap, bias)
    return fused_linear_cross_entropy_reference(hidden, weight, labels, ignore_index, num_items, logit_scale,
                                                softcap, bias)


def dequantize_nf4(state: NF4State, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense weight of a 4-bit state: one Triton pass on CUDA, the plain-PyTorch reference on CPU."""
    if _on("nf4_dequant", state.codes):
        from .kernels.nf4_dequant import dequantize_nf4_triton
        return dequantize_nf4_triton(state, dtype)
    return dequantize_nf4_reference(state, dtype)


# --- attention over packed rows ----------------------------------------------------------------------------------
def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: PackedSegments) -> torch.Tensor:
    """q (B, nh, T, hd), k/v (B, nkv, T, hd) → (B, nh, T, hd); each example attends only within itself.

    Compiled FlexAttention on CUDA, every example alone through SDPA otherwise. (FlexAttention has no CPU
    backward, so the Triton interpreter mode also takes the reference here.)"""
    check_segment_ids(segments.segment_ids, q.shape[0], q.shape[2])
    if use_triton(q) and q.is_cuda:
        from .kernels.segment_attention import segment_attention_flex
        return segment_attention_flex(q, k, v, segments)
    return segment_attention_reference(q, k, v, segments)


# --- token ids ------------------------------------------------------------------------------------------------
def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "input_ids", ignore_index: int | None = None):
    """Refuse ids outside [0, vocab_size) with the position and the value, where that costs no host-device sync
    (host tensors; on a GPU only with MINILORA_DEBUG=1). The embedding would otherwise fail with "index out of
    range in self" on a CPU, and with a device-side assert that ends the process on a GPU — the trainer checks
    its batches on the host before they travel, so training refuses on every device."""
    if not host_checks(ids):
        return
    bad = first_out_of_range(ids, vocab_size, ignore_index)
    if bad is not None:
        (position, value), allowed = bad, f"[0, {vocab_size})" + ("" if ignore_index is None else f" or {ignore_index}")
        raise ValueError(f"{what} holds {value} at position {position}, outside {allowed}: the model's vocabulary "
                         f"has {vocab_size} tokens. Tokenize with the model's own tokenizer (a tokenizer with more "
                         "tokens than the embedding table, or ids written by hand?)")


# --- the causal-LM loss: token t predicts token t + 1 -------------------------------------------------------------
def next_token_targets(labels):
    """The labels the positions are scored against: position t predicts token t + 1, so a row's first label is
    never a target and its last position has nothing to predict. (…, T) -> (…, T - 1).

    The one place the shift by one is written: the losses below and the training data's token counts use it."""
    return labels[..., 1:]


def next_token_pairs(states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States (B, T, D) and labels (B, T) -> the states that predict something (B·(T-1), D) and their targets
    (B·(T-1),)."""
    if labels.shape != states.shape[:2]:
        raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(states.shape[:2])}")
    return states[:, :-1].reshape(-1, states.shape[-1]), next_token_targets(labels).reshape(-1)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, num_items=None) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against labels (B, T) shifted by one (IGNORE_INDEX = no loss)."""
    shift_logits, shift_labels = next_token_pairs(logits, labels)  # (B·(T-1), V), (B·(T-1),)
    # The Triton kernel saves memory by writing the gradient over its input, which is allowed only when the input
    # is a private copy: reshape copies when B > 1, but for B = 1 it is a view of the logits the caller holds.
    private = shift_logits.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr()
    return cross_entropy(shift_logits, shift_labels, num_items=num_items, inplace_grad=private)


def fused_next_token_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, num_items=None,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same loss from the final hidden states (B, T, C) and the head's weight (V, C), never holding all logits
    at once on the Triton path."""
    shift_hidden, shift_labels = next_token_pairs(hidden, labels)  # (B·(T-1), C), (B·(T-1),)
    if not hidden.is_cuda:
        # Only positions that carry a label need logits: with response-only labels that is a small share of the
        # tokens (the head's matmul and its backward shrink with it). Picking them is a boolean index — free on a
        # CPU, a host-device sync on a GPU, where the fused kernel skips ignored rows inside instead.
        keep = shift_labels != IGNORE_INDEX
        if num_items is None:
            num_items = keep.sum()
        shift_hidden, shift_labels = shift_hidden[keep], shift_labels[keep]
    return fused_linear_cross_entropy(shift_hidden, weight, shift_labels, num_items=num_items, bias=bias)


# --- fast LoRA: hand-written backward for whole blocks of LoRA projections --------------------------------------
def fast_lora_on(x: torch.Tensor, block: str | None = None) -> bool:
    """True when LoRA projections of x should go through the fast LoRA Functions (the Triton path is on for x;
    ``block``, "lora_mlp" or "lora_qkv", is not switched off by `without`).

    Which layers qualify is the layers' business (`minilora.lora.fast_lora_weights`); when this is False, or a
    layer doesn't qualify, the model calls its layers one by one."""
    return _on(block, x)


def _fast_lora_kernels(x: torch.Tensor) -> Kernels:
    return Kernels(dequant=_on("nf4_dequant", x), glu=_on("swiglu", x))


def lora_mlp(x: torch.Tensor, gate: LoraWeights, up: LoraWeights, down: LoraWeights) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) through `minilora.kernels.fast_lora.LoRA_MLP` (one hand-written backward)."""
    return apply_lora_mlp(x, gate, up, down, use_kernel=_fast_lora_kernels(x))


def lora_projections(x: torch.Tensor, *projections: LoraWeights) -> tuple:
    """One output per projection of the same x through one `LoRA_QKV` (or `LoRA_O`) Function."""
    return apply_lora_projections(x, *projections, use_kernel=_fast_lora_kernels(x))

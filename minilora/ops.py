"""The one decision point that chooses how ops run.

- ``triton``: the Triton kernels (compiled on CUDA; through the interpreter when ``TRITON_INTERPRET=1`` was set
  before Triton was first imported — that is how tests and kernel lessons run them on a laptop);
- ``reference``: the plain-PyTorch references (fast and exact on CPU);
- ``auto`` (default): Triton for CUDA tensors, the references otherwise.

Set it with the ``MINILORA_KERNELS`` environment variable or ``use_kernels("reference")`` (also a context manager).
Model code calls the functions below and never checks devices itself.
"""
from __future__ import annotations

import contextlib
import os

import torch

from .kernels.cross_entropy import cross_entropy_reference
from .kernels.rmsnorm import rms_norm_reference
from .kernels.rope import rope_reference
from .kernels.swiglu import geglu_reference, swiglu_reference

MODES = ("auto", "triton", "reference")
_mode = os.environ.get("MINILORA_KERNELS", "auto")


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


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


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


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q (B, n_head, T, hd) and k (B, n_kv, T, hd) by cos/sin (B or 1, T, hd)."""
    if use_triton(q):
        from .kernels.rope import rope_fast
        return rope_fast(q, k, cos, sin)
    return rope_reference(q, k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if use_triton(gate):
        from .kernels.swiglu import swiglu_fast
        return swiglu_fast(gate, up)
    return swiglu_reference(gate, up)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    if use_triton(gate):
        from .kernels.swiglu import geglu_fast
        return geglu_fast(gate, up, approximate)
    return geglu_reference(gate, up, approximate)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if use_triton(x):
        from .kernels.rmsnorm import rms_norm_fast
        return rms_norm_fast(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, num_items=None,
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
                               ignore_index: int = -100, num_items=None, logit_scale: float | None = None,
                               softcap: float | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """cross_entropy(hidden (N, H) @ weight (V, H).T + bias, labels); the Triton path never holds all logits."""
    if use_triton(hidden):
        from .kernels.fused_linear_ce import fused_linear_cross_entropy_fast
        return fused_linear_cross_entropy_fast(hidden, weight, labels, ignore_index, num_items, logit_scale,
                                               softcap, bias)
    return cross_entropy_reference(torch.nn.functional.linear(hidden, weight, bias), labels, ignore_index,
                                   num_items, logit_scale, softcap)


# --- fast LoRA: hand-written backward for whole blocks of LoRA projections --------------------------------------
def use_fast_lora(x: torch.Tensor, *layers) -> bool:
    """True when the fast LoRA Functions should run: the Triton path is on for x and every layer is a LoraLinear
    with dropout 0, not merged, over a frozen base. Otherwise the model calls the layers one by one."""
    if _mode == "reference" or (_mode == "auto" and not x.is_cuda):
        return False  # checked first so CPU runs never import the kernel module
    from .kernels.fast_lora import fast_lora_supported
    return fast_lora_supported(*layers) and use_triton(x)


def lora_mlp(x: torch.Tensor, gate, up, down) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)) for LoraLinear gate/up/down, through `minilora.kernels.fast_lora.LoRA_MLP`."""
    from .kernels.fast_lora import apply_lora_mlp
    return apply_lora_mlp(x, gate, up, down)


def lora_qkv(x: torch.Tensor, q_proj, k_proj, v_proj):
    """(q_proj(x), k_proj(x), v_proj(x)) through one `LoRA_QKV` Function (one backward, one dx buffer)."""
    from .kernels.fast_lora import apply_lora_qkv
    return apply_lora_qkv(x, q_proj, k_proj, v_proj)


def lora_o(x: torch.Tensor, o_proj) -> torch.Tensor:
    """o_proj(x) through `LoRA_O`."""
    from .kernels.fast_lora import apply_lora_o
    return apply_lora_o(x, o_proj)

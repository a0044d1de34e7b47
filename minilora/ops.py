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
                  logit_scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """Sum of token losses over non-ignored labels divided by ``num_items`` (default: their count)."""
    if use_triton(logits):
        from .kernels.cross_entropy import cross_entropy_fast
        return cross_entropy_fast(logits, labels, ignore_index, num_items, logit_scale, softcap)
    return cross_entropy_reference(logits, labels, ignore_index, num_items, logit_scale, softcap)

"""What every op's one validation function is made of (layer 1: tensors and numbers only).

Each kernel file has one ``check_<op>`` that both its plain-PyTorch reference and its Triton path call first, so
the two accept and refuse the same inputs with the same error types: shapes that would broadcast silently, dtypes
that would promote the output, non-positive eps/softcap/num_items... What only the Triton path needs (a CUDA or
interpreted device, fp32/fp16/bf16 storage, contiguous memory) is checked after, by `_triton.check_tensor`: float64
stays a reference-only dtype (for gradcheck), and layout is the kernels' own business.
"""
from __future__ import annotations

import math
import numbers

import torch


def check_float(name: str, t) -> None:
    """A floating-point tensor (TypeError otherwise)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} has dtype {t.dtype}: pass a floating-point tensor (float32, float16 or bfloat16)")


def check_positive(name: str, value, *, optional: bool = False) -> None:
    """A finite real number > 0 (None allowed when optional): eps, softcap, logit_scale."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def check_same_device(names: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{names} must be on the same device, got {a.device} and {b.device}")

"""Shared plumbing for the Triton kernels: importing Triton, checking inputs, picking block sizes.

Triton ships Linux wheels only. On macOS and Windows the kernels cannot run (not even in the interpreter), but the
plain-PyTorch references in each kernel file always can: ``minilora.ops`` picks them on CPU by default.
"""
from __future__ import annotations

import functools
import os

import torch

try:  # Kernel modules need `triton` and `tl` at module level: @triton.jit reads the source of the module it decorates.
    import triton
    import triton.language as tl  # re-exported for the kernel files
    TRITON_IMPORT_ERROR: Exception | None = None
except ImportError as err:  # pragma: no cover - only on machines without Triton
    triton = None
    tl = None
    TRITON_IMPORT_ERROR = err

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require_triton() -> None:
    """Raise a helpful error when Triton is missing (it has no macOS/Windows wheels)."""
    if TRITON_IMPORT_ERROR is not None:
        raise ImportError(
            "the minilora Triton kernels need the `triton` package, which is published for Linux only "
            "(no macOS or Windows wheels). On Linux: `pip install triton`. Elsewhere use the PyTorch references: "
            "`minilora.ops.use_kernels('reference')` or MINILORA_KERNELS=reference."
        ) from TRITON_IMPORT_ERROR


if triton is None:  # pragma: no cover
    class _NoTriton:
        """Stands in for `triton` so kernel modules still import; using a kernel raises the message above."""

        @staticmethod
        def jit(fn=None, **_):
            return fn if fn is not None else (lambda f: f)

    triton = _NoTriton()  # type: ignore[assignment]


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def host_checks(t: torch.Tensor) -> bool:
    """Whether to run checks that read tensor VALUES on the host (e.g. "every label < vocabulary size").

    On a GPU such a check waits for the device (a host-device sync in every step), so it runs only on CPU tensors
    or when debugging is asked for with MINILORA_DEBUG=1. Shape, dtype and device checks always run: they are free.
    """
    return not t.is_cuda or os.environ.get("MINILORA_DEBUG", "0") == "1"


def check_tensor(name: str, t: torch.Tensor, *, contiguous: bool = True) -> None:
    """The checks every kernel input gets: a tensor, a supported dtype, a usable device, (optionally) contiguous."""
    require_triton()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; the Triton kernels support float32, float16 and bfloat16 "
                        "(use the *_reference function for other dtypes, e.g. float64 for gradcheck)")
    if not t.is_cuda and not interpreter_on():
        raise RuntimeError(f"{name} is on {t.device}: compiled Triton kernels need a CUDA tensor. On CPU set "
                           "TRITON_INTERPRET=1 before importing triton/minilora to use the interpreter, or use the "
                           "*_reference function")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} is not contiguous (shape {tuple(t.shape)}, strides {t.stride()}): "
                         "call .contiguous() on it first")


def check_same(names: str, a: torch.Tensor, b: torch.Tensor, *, shape: bool = True) -> None:
    if shape and a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{names} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{names} must be on the same device, got {a.device} and {b.device}")


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_programs_hint(device: torch.device) -> int:
    """How many persistent programs fill the device: one per SM on CUDA, a handful in the interpreter."""
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


def elementwise_launch(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for a flat elementwise kernel over n elements."""
    block = 8192 if interpreter_on() else 2048  # the interpreter pays per operation, not per element
    return min(block, max(16, triton.next_power_of_2(n))), 8

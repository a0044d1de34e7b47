"""Finding NaN and inf in weights: one cheap pass, named where it comes from.

A NaN in one weight of a base model, an adapter or a 4-bit quantization state makes every logit NaN, and a chat
reply empty or a loss NaN at step 1 — far from its cause. Loaders check what they read with `check_finite`, which
names the tensor, so the error points at the file.

The screen is a sum per chunk of 4M values: a sum is NaN or inf whenever one of its terms is (IEEE arithmetic
propagates both), it reads the values once and allocates nothing the size of the tensor. Only a chunk whose sum is
not finite (a NaN, or honest values so large their sum overflows) is looked at value by value.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

CHUNK = 1 << 22  # values per pass: the exact look allocates at most one bool per value of one chunk


def first_nonfinite_index(t: torch.Tensor) -> int | None:
    """The flat index of the first NaN or ±inf of ``t``, or None (integer tensors are always finite)."""
    if not t.is_floating_point():
        return None
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start:start + CHUNK]
        # the sum in the tensor's own dtype: PyTorch accumulates 16-bit sums in float32 inside and is fast; asking for a
        # float32 result instead takes a slow path. A half-precision sum that overflows only costs the exact look
        if bool(torch.isfinite(chunk.sum())):
            continue
        bad = (~torch.isfinite(chunk)).nonzero()
        if bad.numel():
            return start + int(bad[0, 0])
    return None


def first_nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, float] | None:
    """(name, flat index, value) of the first tensor holding a NaN or inf, or None when all are finite."""
    for name, t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t  # a sharded (FSDP) weight: this rank's part
        index = first_nonfinite_index(t)
        if index is not None:
            return name, index, float(t.detach().reshape(-1)[index])
    return None


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], source: str, fix: str) -> None:
    """Raise a ValueError naming ``source`` and the first tensor that holds NaN or inf; ``fix`` says what to do."""
    found = first_nonfinite(tensors)
    if found is not None:
        name, index, value = found
        raise ValueError(f"{source}: tensor {name!r} holds {value} (at flat index {index:,}); a NaN or inf weight "
                         f"makes every output NaN — {fix}")

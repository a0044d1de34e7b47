"""The one map from the dtype names people type ("bf16", "float16", "torch.float32") to torch dtypes."""
from __future__ import annotations

import torch

FLOAT_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """float32 / float16 / bfloat16 from a torch dtype or one of its names; anything else is refused."""
    if isinstance(dtype, torch.dtype):
        if dtype in FLOAT_DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in FLOAT_DTYPES:
            return FLOAT_DTYPES[key]
    raise ValueError(f"{what}={dtype!r} is not supported: use 'float32', 'bfloat16', 'float16' (or fp32/bf16/fp16, "
                     "or the torch dtype itself)")


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the spelling config.json files use)."""
    return str(dtype).removeprefix("torch.")

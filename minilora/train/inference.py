"""Fast generation from a QLoRA model: dequantize the 4-bit weights once, not once per generated token.

A `Linear4bit` rebuilds its dense weight on every call. Training needs that (the dense copy would cost the memory
4-bit storage saves), but generating 12 tokens calls every layer 12+ times, so on a CPU most of the time goes into
dequantizing the same weights again and again. Inside ``dense_weights(model)`` every 4-bit layer is swapped for an
``nn.Linear`` holding exactly the values it computes with (results are identical), and swapped back on exit.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..linear4bit import dense_weight, is_quantized


@contextlib.contextmanager
def dense_weights(model: nn.Module):
    """Temporarily replace every 4-bit linear layer by a dense one with the same values (for inference)."""
    swapped = []
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if is_quantized(child):
                    w = dense_weight(child)
                    bias = getattr(child, "bias", None)
                    dense = nn.Linear(child.in_features, child.out_features, bias=bias is not None,
                                      device=w.device, dtype=w.dtype)
                    dense.weight.copy_(w)
                    if bias is not None:
                        dense.bias.copy_(bias)
                    dense.requires_grad_(False)
                    setattr(parent, name, dense)
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)

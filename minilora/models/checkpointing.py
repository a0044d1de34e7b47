"""Gradient checkpointing: keep only each layer's input, recompute the layer during backward.

Modes: False (keep every activation), True / "recompute" (keep layer inputs on the device), "offload" (keep layer
inputs in CPU memory, as Unsloth's "unsloth" mode does, and bring each back just before its layer is recomputed).
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

MODES = (False, True, "recompute", "offload")


def check_mode(mode) -> bool | str:
    if mode == "unsloth":
        mode = "offload"
    if mode not in MODES:
        raise ValueError(f"use_gradient_checkpointing={mode!r}: choose False, True (recompute) or 'offload' "
                         "('unsloth' is accepted as a name for 'offload')")
    return mode


def run_layer(layer, mode, x, *args):
    if not mode:
        return layer(x, *args)
    if mode == "offload":
        with torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda):
            return checkpoint(layer, x, *args, use_reentrant=False)
    return checkpoint(layer, x, *args, use_reentrant=False)

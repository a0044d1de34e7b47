"""Gradient checkpointing: keep only each layer's input, recompute the layer during backward.

Modes: False (keep every activation), True / "recompute" (keep layer inputs on the device), "offload" (keep layer
inputs in CPU memory, as Unsloth's "unsloth" mode does, and bring each back just before its layer is recomputed).

Why "offload" needs its own autograd Function: ``torch.autograd.graph.save_on_cpu`` moves tensors that autograd
*saves*, but a non-reentrant ``checkpoint`` replaces every saved tensor of the layer with a placeholder and keeps
the layer's *inputs* alive itself (inside the closure it uses to recompute) — on the GPU. Stacking the two offloads
nothing. `OffloadedCheckpoint` below stores the one tensor that matters, the layer input (B, T, C), in CPU memory,
runs the layer without building a graph, and in backward copies the input back, re-runs the layer with the same
random state (dropout draws the same mask) and backpropagates through that fresh graph.
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


class _RngState:
    """The CPU generator and (if the input is on CUDA) that device's generator, captured and restorable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def fork_and_restore(self):
        devices = [self.device] if self.cuda is not None else []
        ctx = torch.random.fork_rng(devices=devices, enabled=True)
        ctx.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        return ctx


class OffloadedCheckpoint(torch.autograd.Function):
    """Forward: run the layer with no graph; keep its input x (B, T, C) in CPU memory only.
    Backward: bring x back, recompute the layer with grad on, backpropagate ``grad_out`` through it."""

    @staticmethod
    def forward(ctx, x, layer, *args):
        ctx.layer, ctx.args, ctx.device = layer, args, x.device
        ctx.rng = _RngState(x.device)
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        # non_blocking + pinned memory lets the copy overlap the next layer's compute on a GPU
        if x.is_cuda:
            ctx.x_cpu = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
            ctx.x_cpu.copy_(x, non_blocking=True)
        else:
            ctx.x_cpu = x.detach().clone()  # on CPU "offloading" is a copy: same code path, testable anywhere
        with torch.no_grad():
            return layer(x, *args)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.x_cpu.to(ctx.device, non_blocking=True).requires_grad_(True)
        del ctx.x_cpu
        rng = ctx.rng.fork_and_restore()
        try:
            enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
                out = ctx.layer(x, *ctx.args)
        finally:
            rng.__exit__(None, None, None)
        # gradients for the layer's trainable parameters accumulate into .grad right here
        torch.autograd.backward(out, grad_out)
        return (x.grad, None) + (None,) * len(ctx.args)


def run_layer(layer, mode, x, *args):
    """Run one decoder layer under the chosen checkpointing mode (args must not need gradients)."""
    if not mode:
        return layer(x, *args)
    if mode == "offload":
        if torch.is_grad_enabled() and not x.requires_grad:
            # the first layer's input comes from a frozen embedding: without this the Function would look
            # constant to autograd and the LoRA weights inside the layers would get no gradient at all
            x = x.detach().requires_grad_(True)
        return OffloadedCheckpoint.apply(x, layer, *args)
    return checkpoint(layer, x, *args, use_reentrant=False)

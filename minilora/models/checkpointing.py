"""Gradient checkpointing: keep only each layer's input, recompute the layer during backward.

Modes: False (keep every activation), True / "recompute" (keep layer inputs on the device), "offload" (keep layer
inputs in CPU memory, as Unsloth's "unsloth" mode does, and bring each back just before its layer is recomputed).
A model may also hold one mode per decoder layer (a list), or a planner that picks that list for the shape of the
batch (`minilora.memory.plan.CheckpointPlanner`, behind ``use_gradient_checkpointing="auto"``): anything with a
``layer_modes(x, num_layers)`` method. The planner lives above the models (it needs the memory formulas), so this
file only asks it, by that method, and never imports it.

Why "offload" needs its own autograd Function: ``torch.autograd.graph.save_on_cpu`` moves tensors that autograd
*saves*, but a non-reentrant ``checkpoint`` replaces every saved tensor of the layer with a placeholder and keeps
the layer's *inputs* alive itself (inside the closure it uses to recompute) — on the GPU. Stacking the two offloads
nothing. `OffloadedCheckpoint` below stores the one tensor that matters, the layer input (B, T, C), in CPU memory,
runs the layer without building a graph, and in backward copies the input back, re-runs the layer with the same
random state (dropout draws the same mask) and backpropagates through that fresh graph.

Where the input lives on the host (a bounded pool of pinned chunks, then a spill file on disk) is
`minilora.models.offload_store`'s business. On a GPU the copies must not stall the computation: both directions run
on a side stream, so the device-to-host copy of layer i's input overlaps layer i's forward, and the backward of layer i starts bringing
back layer i-1's input (a prefetch, `OffloadChain`) while layer i is recomputed. The price is one extra layer
input on the device during the backward.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .offload_store import StoredTensor, default_store

MODES = (False, True, "recompute", "offload")


def check_mode(mode) -> bool | str:
    if mode == "unsloth":
        mode = "offload"
    if mode not in MODES:
        raise ValueError(f"use_gradient_checkpointing={mode!r}: choose False, True (recompute), 'offload' "
                         "('unsloth' is accepted as a name for 'offload') or 'auto' (a memory budget picks one of "
                         "the three per layer)")
    return mode


def check_setting(mode, memory_budget=None):
    """What a user passes as ``use_gradient_checkpointing`` (with its ``memory_budget``): one of the layer modes
    (`check_mode`, which resolves "unsloth") or "auto", planned per layer by `minilora.memory.plan`; a budget goes
    only with "auto"."""
    if memory_budget is not None and mode != "auto":
        raise ValueError(f"memory_budget={memory_budget!r} is used only with use_gradient_checkpointing='auto', not "
                         f"{mode!r}: pass 'auto' or drop the budget")
    return mode if mode == "auto" else check_mode(mode)


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


class OffloadChain:
    """The offloaded inputs of one forward pass, in layer order, so each backward can prefetch the one before."""

    def __init__(self):
        self.last: StoredTensor | None = None


class OffloadedCheckpoint(torch.autograd.Function):
    """Forward: run the layer with no graph; keep its input x (B, T, C) in CPU memory only.
    Backward: bring x back, recompute the layer with grad on, backpropagate ``grad_out`` through it."""

    @staticmethod
    def forward(ctx, x, layer, chain, *args):
        ctx.layer, ctx.args = layer, args
        ctx.rng = _RngState(x.device)
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        ctx.saved = default_store().put(x)
        ctx.previous = chain.last if chain is not None else None  # the layer before: prefetched in backward
        if chain is not None:
            chain.last = ctx.saved
        with torch.no_grad():
            return layer(x, *args)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.saved.fetch().requires_grad_(True)
        if ctx.previous is not None:
            ctx.previous.prefetch()  # the next layer to be recomputed: its copy overlaps this layer's work
        ctx.saved = ctx.previous = None
        rng = ctx.rng.fork_and_restore()
        # a layer may recompute and backpropagate in one pass (the tiled MLP: minilora.models.tiled); gradients for
        # the layer's trainable parameters accumulate into .grad right here either way
        recompute_backward = getattr(ctx.layer, "recompute_backward", None)
        if ctx.layer._forward_pre_hooks or ctx.layer._forward_hooks:
            recompute_backward = None  # a wrapper (FSDP's unshard/reshard) expects the layer to be called
        try:
            enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
                if recompute_backward is not None:
                    recompute_backward(x, grad_out, *ctx.args)
                else:
                    out = ctx.layer(x, *ctx.args)
        finally:
            rng.__exit__(None, None, None)
        if recompute_backward is None:
            torch.autograd.backward(out, grad_out)
        return (x.grad, None, None) + (None,) * len(ctx.args)


def run_layer(layer, mode, x, *args, chain: OffloadChain | None = None):
    """Run one decoder layer under the chosen checkpointing mode (args must not need gradients)."""
    if not mode:
        return layer(x, *args)
    if mode == "offload":
        if torch.is_grad_enabled() and not x.requires_grad:
            # the first layer's input comes from a frozen embedding: without this the Function would look
            # constant to autograd and the LoRA weights inside the layers would get no gradient at all
            x = x.detach().requires_grad_(True)
        return OffloadedCheckpoint.apply(x, layer, chain, *args)
    return checkpoint(layer, x, *args, use_reentrant=False)


def layer_modes(mode, num_layers: int, x: torch.Tensor) -> list:
    """One checkpointing mode per decoder layer: the same mode for every layer, a list given per layer, or the list
    a planner chooses for this input's shape."""
    if hasattr(mode, "layer_modes"):
        mode = mode.layer_modes(x, num_layers)
    if isinstance(mode, (list, tuple)):
        if len(mode) != num_layers:
            raise ValueError(f"{len(mode)} checkpointing modes for {num_layers} decoder layers: give one per layer")
        return [check_mode(m) for m in mode]
    return [mode] * num_layers


def run_layers(layers, mode, x, *args):
    """Run the decoder layers in order, each under its checkpointing mode (one offload chain per forward pass:
    an offloaded layer's backward prefetches the input of the offloaded layer before it)."""
    modes = layer_modes(mode, len(layers), x)
    chain = OffloadChain() if "offload" in modes else None
    for layer, layer_mode in zip(layers, modes):
        x = run_layer(layer, layer_mode, x, *args, chain=chain)
    return x

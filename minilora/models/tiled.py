"""A token-wise function run over tiles of tokens, so its wide intermediates exist one tile at a time.

Why: in a checkpointed 8B layer the MLP dominates the GPU's per-token cost. Its gate and up outputs are (T, 14336)
each, its backward adds a third such buffer: 3 × 28 KB per token, against 8 KB for the layer input itself. But the
MLP half of a decoder layer, ``h + mlp(norm(h))``, treats every token on its own (RMSNorm, the projections and
SwiGLU act row by row), so the tokens can be cut into tiles and each tile run alone; the result is the same, up to
the rounding of the smaller matrix products.

Two places use it:
- a forward without a graph (the offloaded checkpoint's first pass, inference): `tiled_forward` runs tile after
  tile into one output buffer;
- the offloaded checkpoint's backward, where the gradient of the layer's output is already known: `tiled_backward`
  recomputes one tile with grad on and backpropagates it at once, so no tile's intermediates outlive it and the
  MLP runs no more often than without tiles (a generic "save the input, recompute per tile in backward" Function
  would run it a third time). The trainable weights' gradients are summed over the tiles and handed to autograd
  once, together with the gradient of the MLP half's input.
"""
from __future__ import annotations

import torch
from torch import nn

# 8192 tokens: the (tile, 14336) products are still large enough to run at full speed, and an 8B tile's MLP
# intermediates take ~0.7 GB however long the sequence is
DEFAULT_TILE_TOKENS = 8192


def _tile_starts(n: int, tile: int) -> range:
    if not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"tile of {tile!r} tokens: use a positive integer (or None to run untiled)")
    return range(0, n, tile)


def tiled_forward(fn, h: torch.Tensor, tile: int | None) -> torch.Tensor:
    """fn(h) for a token-wise fn, computed `tile` tokens at a time (h (..., C) → (..., C_out)); call without a graph."""
    flat = h.reshape(-1, h.shape[-1])  # (N, C)
    if tile is None or flat.shape[0] <= tile:
        return fn(h)
    out = None
    for start in _tile_starts(flat.shape[0], tile):
        part = fn(flat[start:start + tile])  # (n, C_out)
        if out is None:
            out = part.new_empty(flat.shape[0], part.shape[-1])
        out[start:start + part.shape[0]] = part
    return out.view(*h.shape[:-1], out.shape[-1])


def tiled_backward(fn, h: torch.Tensor, grad_out: torch.Tensor, tile: int, params=()) -> tuple:
    """Gradients of sum(fn(h) * grad_out), recomputing fn one tile at a time: returns (grad of h, {param: grad}) for
    the trainable `params` fn uses. The parameter gradients are summed over the tiles here and handed to autograd
    once by the caller, so hooks that expect one gradient per parameter and step (DDP's) see one.
    h (..., C), grad_out (..., C_out)."""
    flat = h.detach().reshape(-1, h.shape[-1])  # (N, C)
    grad_flat = grad_out.reshape(-1, grad_out.shape[-1])  # (N, C_out)
    grad_h = torch.empty_like(flat)
    params = [p for p in params if p.requires_grad]
    sums: dict = {}
    for start in _tile_starts(flat.shape[0], tile):
        part = flat[start:start + tile].detach().requires_grad_(True)
        with torch.enable_grad():
            out = fn(part)
        grads = torch.autograd.grad(out, [part, *params], grad_flat[start:start + tile], allow_unused=True)
        grad_h[start:start + tile] = grads[0]
        for p, g in zip(params, grads[1:]):
            if g is not None:
                sums[p] = g if p not in sums else sums[p].add_(g)
    return grad_h.view(h.shape), sums


def set_tile_tokens(model: nn.Module, tile: int | None) -> nn.Module:
    """Set how many tokens each tile of the layers' MLP holds (None: run it untiled) on every layer that tiles."""
    if tile is not None:
        _tile_starts(1, tile)  # the same check as at run time, now
    for module in model.modules():
        if hasattr(module, "tile_tokens"):
            module.tile_tokens = tile
    return model

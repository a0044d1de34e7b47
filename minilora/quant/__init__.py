"""4-bit NormalFloat (NF4) quantization and QLoRA's frozen 4-bit linear layer, from scratch.

- `nf4`: the 16 levels, derived from N(0, 1) quantiles (and the published table the bytes use);
- `blockwise`: quantize / dequantize in blocks, nibble packing, double quantization, the state dataclasses;
- `linear4bit`: `Linear4bit`, dequantizing just in time in forward and backward;
- `quantize_model`: turn every linear layer of a model's blocks into Linear4bit, in place.
"""
from __future__ import annotations

import torch
from torch import nn

from .blockwise import (DOUBLE_QUANT_BLOCKSIZE, DoubleQuantState, NF4State, check_blocksize, check_state,
                        dequantize_nf4_reference, double_quantize_absmax, pack_nibbles, quantization_error,
                        quantize_nf4, unpack_nibbles)
from .linear4bit import Linear4bit
from .nf4 import (NF4_CODEBOOK, derive_nf4_codebook, dynamic_map_8bit, nf4_codebook, nf4_midpoints, nf4_offset,
                  uniform_int4_codebook)

__all__ = ["NF4_CODEBOOK", "DOUBLE_QUANT_BLOCKSIZE", "DoubleQuantState", "NF4State", "Linear4bit", "check_blocksize",
           "check_state", "dense_weight", "dequantize_nf4", "dequantize_nf4_reference", "derive_nf4_codebook",
           "double_quantize_absmax", "dynamic_map_8bit", "nf4_codebook", "nf4_midpoints", "nf4_offset",
           "pack_nibbles", "quantization_error", "quantize_model", "quantize_nf4", "uniform_int4_codebook",
           "unpack_nibbles"]


def dequantize_nf4(state: NF4State, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantize (Triton on CUDA, plain PyTorch on CPU; see `minilora.kernels.nf4_dequant`)."""
    from ..kernels.nf4_dequant import dequantize_nf4 as _dispatch
    return _dispatch(state, dtype)


def dense_weight(layer: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (out, in) weight a linear layer computes with: nn.Linear's own, or a Linear4bit's dequantized."""
    if isinstance(layer, Linear4bit):
        return layer.dequantize(dtype)
    if isinstance(layer, nn.Linear):
        return layer.weight if dtype is None else layer.weight.to(dtype)
    raise TypeError(f"dense_weight needs nn.Linear or Linear4bit, got {type(layer).__name__}")


@torch.no_grad()
def quantize_model(model: nn.Module, blocksize: int = 64, double_quant: bool = True,
                   compute_dtype: torch.dtype | None = None, skip=("lm_head",)) -> nn.Module:
    """Replace every nn.Linear inside ``model.model.layers`` by a frozen NF4 `Linear4bit`, in place; returns model.

    Embeddings, norms and the head stay as they are (QLoRA quantizes the blocks' linear layers only). `skip` lists
    layer names (the last part, e.g. "down_proj", or a full dotted name) to leave in full precision.
    """
    check_blocksize(blocksize)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"quantize_model expects a causal LM with model.model.layers (a ModuleList of decoder "
                        f"blocks), got {type(model).__name__}")
    if any(name.endswith(("lora_A", "lora_B")) for name, _ in model.named_modules()):
        raise ValueError("this model already has LoRA adapters: quantize the base model first, then call "
                         "get_peft_model (QLoRA keeps the adapters in 16/32-bit)")
    skip = tuple(skip or ())
    for block_idx, block in enumerate(layers):
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"model.layers.{block_idx}.{name + '.' if name else ''}{child_name}"
                if type(child) is nn.Linear and child_name not in skip and full not in skip:
                    setattr(module, child_name, Linear4bit.from_linear(child, blocksize, double_quant, compute_dtype))
    return model

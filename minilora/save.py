"""Saving a fine-tune three ways, each readable by the tools people already use.

- ``lora``: the adapter alone in PEFT's format (a few MB) — `minilora.io.adapters`.
- ``merged_16bit``: $W' = W + \\frac{\\alpha}{r} B A$ computed in fp32 for every adapted layer and written as fp16/bf16
  safetensors with ``config.json`` and the tokenizer files: transformers' ``from_pretrained`` opens it.
- ``merged_4bit``: the same merge, cast to ``dtype``, then every linear weight except ``lm_head`` stored as NF4 with
  double quantization in the layout transformers + bitsandbytes save (`minilora.io.bnb4bit`): ``from_pretrained``
  opens it as a 4-bit model, and so does minilora's loader (which dequantizes it). 4 bits per weight + 8 per
  block of 64 + 32 per 256 blocks (≈ 4.127) plus ~1.3 KB of tables per weight matrix, instead of 16. The small
  ΔW is mostly *below* the NF4 step size of its block, so rounding erases much of it: this is why Unsloth warns
  that merging into 4-bit loses accuracy, and why week 5 measures it.
- GGUF (llama.cpp's single file): F16, Q8_0 or F32 tensors through the `gguf` package, with the tokenizer and the
  chat template in its metadata, and the rows of W_q and W_k permuted into llama.cpp's interleaved RoPE layout.

Every writer builds its output in a staging place next to the target and swaps it in whole
(`minilora.io.atomic`), so an error (or Ctrl-C) never leaves half a model behind. Before writing, a save refuses a
target that is (or contains) what the model was loaded from (``model.loaded_from``, set by the loader), and an
existing non-empty target unless ``overwrite=True``. The file formats themselves live
in `minilora.io` (adapters, GGUF); this module decides what goes into them.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from .dtypes import dtype_name, parse_dtype
from .io import bnb4bit
from .io.atomic import check_save_target, write_dir
from .io.gguf import GGUF_TYPES, write_gguf
from .linear4bit import dense_weight, is_quantized
from .lora import LoraLinear
from .quant.blockwise import NF4_BLOCKSIZE

SAVE_METHODS = ("lora", "merged_16bit", "merged_4bit")
__all__ = ["GGUF_TYPES", "SAVE_METHODS", "merged_state_dict", "nf4_round_trip", "quantizable_weights", "save_gguf",
           "save_pretrained_merged"]


def nf4_round_trip(w: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    """w rounded to the nearest NF4 code of its block (what storing it in 4-bit keeps)."""
    from .quant.blockwise import dequantize_nf4_reference, quantize_nf4
    return dequantize_nf4_reference(quantize_nf4(w.float(), blocksize=blocksize), torch.float32).reshape(w.shape)


def merged_state_dict(model: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors of the model with every LoRA update folded into its base weight."""
    out: dict[str, torch.Tensor] = {}

    def visit(prefix: str, module: nn.Module):
        if isinstance(module, LoraLinear):
            w = dense_weight(module.base_layer, torch.float32).detach()
            if not module.merged:  # an already merged layer holds W + ΔW in its base weight
                w = w + module.delta_weight().detach().float()
            out[f"{prefix}weight"] = w.to(dtype)
            bias = getattr(module.base_layer, "bias", None)
            if bias is not None:
                out[f"{prefix}bias"] = bias.detach().to(dtype)
            return
        if is_quantized(module):
            w = dense_weight(module, torch.float32)  # a 4- or 8-bit base layer that LoRA does not wrap
            out[f"{prefix}weight"] = w.to(dtype)
            if getattr(module, "bias", None) is not None:
                out[f"{prefix}bias"] = module.bias.detach().to(dtype)
            return
        for name, p in module.named_parameters(recurse=False):
            out[f"{prefix}{name}"] = p.detach().to(dtype)
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    if getattr(model.config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)  # tied: the embedding matrix serves both; transformers re-ties on load
    return {k: v.contiguous().cpu() for k, v in out.items()}


def loaded_from(model: nn.Module) -> list[str]:
    """The files and directories ``model`` was read from (a save must never replace them)."""
    return list(getattr(model, "loaded_from", ()) or ())


def quantizable_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names in ``tensors`` (a `merged_state_dict`) of the linear weights transformers quantizes with
    ``load_in_4bit``: every linear layer but ``lm_head`` (a LoRA layer's lora_A/lora_B are merged away already)."""
    return [f"{name}.weight" for name, m in model.named_modules()
            if (isinstance(m, (LoraLinear, nn.Linear)) or is_quantized(m)) and name != "lm_head"
            and f"{name}.weight" in tensors]


def refuse_sharded_merge(model: nn.Module, what: str) -> None:
    """A merged or GGUF save needs every base weight whole; an FSDP-sharded model holds 1/N of each on a rank."""
    from .train.distributed import is_sharded
    if any(is_sharded(p) for p in model.parameters()):
        raise ValueError(f"{what} of an FSDP-sharded model: the merge needs the whole base, which no single rank "
                         "holds. Save the adapter (save_method='lora'), then merge in one process: "
                         "FastLanguageModel.from_pretrained(<adapter dir>) and save_pretrained_merged")


def save_pretrained_merged(model: nn.Module, tokenizer, save_directory: str, save_method: str = "merged_16bit",
                           dtype: str | torch.dtype = "float16", base_model_name_or_path: str | None = None,
                           adapter_tensors: dict | None = None, overwrite: bool = False) -> str:
    """Save as ``lora`` (adapter only), ``merged_16bit`` or ``merged_4bit`` (see the module docstring).

    ``base_model_name_or_path`` is recorded in the adapter's config so that loading the adapter directory with
    `FastLanguageModel.from_pretrained` (or PEFT) knows which base model to load first. ``adapter_tensors``: the
    adapter already gathered from a sharded model (`minilora.io.adapters.adapter_state_dict` on every rank). An
    existing non-empty ``save_directory`` is refused unless ``overwrite=True``, and then replaced as a whole (no file
    of an earlier save stays behind)."""
    from safetensors.torch import save_file

    if save_method not in SAVE_METHODS:
        raise ValueError(f"save_method={save_method!r}: choose one of {', '.join(SAVE_METHODS)}")
    dtype = parse_dtype(dtype)
    if save_method != "lora":
        refuse_sharded_merge(model, f"save_method={save_method!r}")
    check_save_target(save_directory, loaded_from(model), overwrite)

    def fill(tmp: str) -> None:
        if save_method == "lora":
            from .io.adapters import write_adapter
            write_adapter(model, tmp, base_model_name_or_path, tensors=adapter_tensors)
        else:
            tensors = merged_state_dict(model, dtype)
            config = model.config.to_hf_dict(dtype_name(dtype))
            if save_method == "merged_4bit":
                tensors = bnb4bit.quantize_state_dict(tensors, quantizable_weights(model, tensors))
                config["quantization_config"] = bnb4bit.quantization_config(dtype)
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
                           "pad_token_id": model.config.pad_token_id}, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    write_dir(save_directory, fill)
    return save_directory


def save_gguf(model: nn.Module, tokenizer, path: str, quantization: str = "f16", name: str = "minilora-model",
              overwrite: bool = False) -> str:
    """Write a llama.cpp GGUF file (``quantization``: f16, q8_0 or f32) of the model with LoRA merged in.
    An existing file is refused unless ``overwrite=True``."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"GGUF path {str(path)!r} is a directory; pass a file name like model.gguf")
    refuse_sharded_merge(model, "a GGUF save")
    check_save_target(path, loaded_from(model), overwrite, is_dir=False)
    return write_gguf(path, merged_state_dict(model, torch.float32), model.config, tokenizer, quantization, name)

"""Saving a fine-tune three ways, each readable by the tools people already use.

- ``lora``: the adapter alone in PEFT's format (a few MB) — `minilora.io.adapters`.
- ``merged_16bit``: $W' = W + \\frac{\\alpha}{r} B A$ computed in fp32 for every adapted layer and written as fp16/bf16
  safetensors with ``config.json`` and the tokenizer files: transformers' ``from_pretrained`` opens it.
- ``merged_4bit``: the same merge, then every merged linear weight rounded through NF4 (quantize, dequantize) —
  what a model that keeps its merged weights in 4-bit computes. The small ΔW is mostly *below* the NF4 step size
  of its block, so rounding erases much of it: this is why Unsloth warns that merging into 4-bit loses accuracy,
  and why week 5 measures it. The file keeps 16-bit storage so every tool can open it.
- GGUF (llama.cpp's single file): F16, Q8_0 or F32 tensors through the `gguf` package, with the tokenizer and the
  chat template in its metadata, and the rows of W_q and W_k permuted into llama.cpp's interleaved RoPE layout.

Every writer builds its output in a temporary place next to the target and renames it into place, so an error
(or Ctrl-C) never leaves half a model behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import torch
from torch import nn

from .lora import LoraLinear

SAVE_METHODS = ("lora", "merged_16bit", "merged_4bit")
GGUF_TYPES = ("f16", "q8_0", "f32")
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}
ARCHITECTURE_NAMES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


# --- weights ---------------------------------------------------------------------------------------------------
def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight (out, in) of a linear layer, dequantized if it is stored in 4-bit."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach().float()
    for name in ("dequantize", "dequantize_weight"):
        if callable(getattr(layer, name, None)):
            return getattr(layer, name)().detach().float()
    raise TypeError(f"cannot read a dense weight from {type(layer).__name__}: it is neither nn.Linear nor has a "
                    "dequantize() method")


def nf4_round_trip(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """w rounded to the nearest NF4 code of its block (what storing it in 4-bit keeps)."""
    from .quant.blockwise import dequantize_nf4_reference, quantize_nf4
    return dequantize_nf4_reference(quantize_nf4(w.float(), blocksize=blocksize), torch.float32).reshape(w.shape)


def merged_state_dict(model: nn.Module, dtype: torch.dtype = torch.float16, quantize_4bit: bool = False
                      ) -> dict[str, torch.Tensor]:
    """Hugging Face-named tensors of the model with every LoRA update folded into its base weight."""
    out: dict[str, torch.Tensor] = {}

    def visit(prefix: str, module: nn.Module):
        if isinstance(module, LoraLinear):
            w = dense_weight(module.base_layer)
            if not module.merged:  # an already merged layer holds W + ΔW in its base weight
                w = w + module.delta_weight().detach().float()
            if quantize_4bit:
                w = nf4_round_trip(w)
            out[f"{prefix}weight"] = w.to(dtype)
            bias = getattr(module.base_layer, "bias", None)
            if bias is not None:
                out[f"{prefix}bias"] = bias.detach().to(dtype)
            return
        if not isinstance(module, nn.Linear) and any(callable(getattr(module, n, None))
                                                     for n in ("dequantize", "dequantize_weight")):
            w = dense_weight(module)  # a 4-bit base layer that LoRA does not wrap
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


def hf_config(config, dtype: torch.dtype) -> dict:
    """config.json for transformers: the model's numbers plus the keys transformers expects."""
    d = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    d["architectures"] = [ARCHITECTURE_NAMES.get(config.model_type, "LlamaForCausalLM")]
    d["torch_dtype"] = str(dtype).replace("torch.", "")
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        rope.update(config.rope_scaling)
    d["rope_parameters"] = rope
    if config.model_type == "qwen2":
        d["use_sliding_window"] = False
        d.pop("sliding_window", None)
    d.setdefault("mlp_bias", False)
    return d


# --- atomic directory writing ------------------------------------------------------------------------------------
def _check_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"save path {path!r} is an existing file; pass a directory path (it is created "
                                 "if missing)")


def _publish(tmp: str, target: str) -> None:
    """Move every file of ``tmp`` into ``target`` (one rename each) and remove ``tmp``."""
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(target, name))
    os.rmdir(tmp)


def _staging_dir(target: str) -> str:
    parent = os.path.dirname(os.path.abspath(target)) or "."
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tmp-save-", dir=parent)


def save_pretrained_merged(model: nn.Module, tokenizer, save_directory: str, save_method: str = "merged_16bit",
                           dtype: str | torch.dtype = "float16", base_model_name_or_path: str | None = None) -> str:
    """Save as ``lora`` (adapter only), ``merged_16bit`` or ``merged_4bit`` (see the module docstring).

    ``base_model_name_or_path`` is recorded in the adapter's config so that loading the adapter directory with
    `FastLanguageModel.from_pretrained` (or PEFT) knows which base model to load first."""
    from safetensors.torch import save_file

    if save_method not in SAVE_METHODS:
        raise ValueError(f"save_method={save_method!r}: choose one of {', '.join(SAVE_METHODS)}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: choose float16, bfloat16 or float32")
        dtype = DTYPES[dtype]
    _check_dir(save_directory)
    tmp = _staging_dir(save_directory)
    try:
        if save_method == "lora":
            from .io.adapters import save_adapter
            save_adapter(model, tmp, base_model_name_or_path)
        else:
            tensors = merged_state_dict(model, dtype, quantize_4bit=save_method == "merged_4bit")
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            config = hf_config(model.config, dtype)
            if save_method == "merged_4bit":
                config["minilora_merged"] = ("LoRA merged, then linear weights rounded through NF4 (blocksize 64); "
                                             "stored in 16-bit for portability")
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(config, f, indent=2)
            with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                json.dump({"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
                           "pad_token_id": model.config.pad_token_id}, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _publish(tmp, save_directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return save_directory


# --- GGUF --------------------------------------------------------------------------------------------------------
GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    module, kind = hf.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, layer, rest = module.split(".", 3)
        return f"blk.{layer}.{GGUF_NAMES[rest]}.{kind}"
    return f"{GGUF_NAMES[module]}.{kind}"


def _tokenizer_metadata(tokenizer) -> dict:
    """Vocabulary, merges and token types for GGUF's ``tokenizer.ggml.*`` keys, from the tokenizer's JSON."""
    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError("GGUF export needs a tokenizer backed by the `tokenizers` library (minilora's Tokenizer "
                        "or a transformers fast tokenizer)")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')}")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, t in added.items():
        vocab.setdefault(content, t["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [3 if tok in added and added[tok].get("special") else 4 if tok in added else 1 for tok in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = "smollm" if "Digits" in json.dumps(spec.get("pre_tokenizer")) else "gpt2"
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def save_gguf(model: nn.Module, tokenizer, path: str, quantization: str = "f16", name: str = "minilora-model") -> str:
    """Write a llama.cpp GGUF file (``quantization``: f16, q8_0 or f32). Norm weights always stay F32."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    from .io.gguf import permute_qk

    quantization = quantization.lower()
    if quantization not in GGUF_TYPES:
        raise ValueError(f"GGUF quantization {quantization!r}: choose one of {', '.join(GGUF_TYPES)}")
    cfg = model.config
    if cfg.model_type != "llama" or cfg.attention_bias or cfg.qkv_bias:
        raise ValueError(f"GGUF export supports the plain llama architecture; this model is {cfg.model_type!r}"
                         f"{' with attention biases' if cfg.attention_bias or cfg.qkv_bias else ''}")
    if cfg.rope_scaling:
        raise ValueError("GGUF export does not write RoPE scaling; export a model without rope_scaling")
    if os.path.isdir(path):
        raise IsADirectoryError(f"GGUF path {path!r} is a directory; pass a file name like model.gguf")
    tensors = merged_state_dict(model, torch.float32)
    tok = _tokenizer_metadata(tokenizer)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=directory)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_rope_dimension_count(cfg.head_dim)
        if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quantization])
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                         ("pad", tokenizer.pad_token_id)):
            if tid is not None:
                getattr(w, f"add_{key}_token_id")(tid)
        w.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
        if getattr(tokenizer, "chat_template", None):
            w.add_chat_template(tokenizer.chat_template)
        for hf, t in tensors.items():
            if hf.endswith("q_proj.weight"):
                t = permute_qk(t, cfg.num_attention_heads)  # rotate-half rows -> llama.cpp's interleaved pairs
            elif hf.endswith("k_proj.weight"):
                t = permute_qk(t, cfg.num_key_value_heads)
            data = t.numpy().astype(np.float32)
            if data.ndim == 1 or quantization == "f32":
                w.add_tensor(gguf_name(hf), data)
            elif quantization == "q8_0" and data.shape[-1] % 32 == 0:  # Q8_0 blocks hold 32 values of a row
                w.add_tensor(gguf_name(hf), gguf.quants.quantize(data, Q.Q8_0), raw_dtype=Q.Q8_0)
            else:
                w.add_tensor(gguf_name(hf), data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path

"""GGUF (llama.cpp's format), both ways: read a file into a Hugging Face-style config, a state dict and the
tokenizer metadata; write a fine-tuned model back out (`write_gguf`).

A GGUF file is one self-describing blob: key/value metadata (architecture numbers, the tokenizer's vocabulary and
merges, the chat template) followed by tensors, each possibly block-quantized (Q4_1, Q8_0, …). Three things differ
from a Hugging Face checkpoint, and this module undoes each:

1. **Names.** ``blk.3.attn_q.weight`` is ``model.layers.3.self_attn.q_proj.weight`` (see `TENSOR_NAMES`).
2. **Shapes** are written fastest-varying dimension first, i.e. reversed: GGUF's ``[576, 1536]`` is PyTorch's
   ``(1536, 576)``. The `gguf` package hands us the data already in PyTorch order; the listed shape stays reversed.
3. **RoPE layout.** llama.cpp rotates *adjacent pairs* of a head's dimensions ``(x0, x1), (x2, x3), …`` while
   Hugging Face Llama code rotates the *two halves* ``(x_i, x_{i + hd/2})`` ("rotate-half"). Both are the same
   rotation if the rows of W_q and W_k are reordered, so the converter permutes those rows when it writes a Llama
   GGUF. `unpermute_qk` puts them back, so the file runs in our rotate-half model.

The `gguf` package (gguf-py, from llama.cpp) does the parsing and the dequantization, after `gguf_check` has walked
the header with every count bounded by the file's size; nothing here runs pickle.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..models.claimed_sizes import check_claimed_sizes
from ..models.config import ModelConfig
from ..models.family import MODEL_TYPES, ModelFamily, family
from .atomic import write_file
from .gguf_check import GGUF_MAGIC, GGUFError, check_gguf

TENSOR_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}




# --- the RoPE row permutation ----------------------------------------------------------------------------------
def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half row order -> interleaved-pair row order (what a GGUF converter does to W_q and W_k).

    Within each head, row ``half * hd/2 + i`` moves to row ``2 * i + half``. Works for weights (rows, in) and
    biases (rows,).
    """
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair row order (GGUF) -> rotate-half row order (Hugging Face): the inverse of `permute_qk`."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# --- which family a file is: each family's record names its GGUF architecture ----------------------------------
def gguf_family(architecture) -> ModelFamily:
    """The family whose record claims ``general.architecture`` (llama.cpp writes Mistral models as "llama" too;
    `config_from_metadata` tells them apart by the sliding window)."""
    readable = {r.gguf_architecture: r for r in MODEL_TYPES.values() if r.gguf_architecture is not None}
    if not isinstance(architecture, str) or architecture not in readable:
        raise GGUFError(f"GGUF architecture {architecture!r} is not supported; minilora reads "
                        f"{', '.join(sorted(readable))}")
    return readable[architecture]


# --- reading ---------------------------------------------------------------------------------------------------
def open_gguf(path: str | os.PathLike):
    """A `gguf.GGUFReader` for ``path``, with a clear error for a missing, foreign or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    check_gguf(path)  # every count and length bounded by the file's size, before gguf-py trusts them
    try:
        from gguf import GGUFReader
    except ImportError as e:  # pragma: no cover - gguf is a runtime dependency
        raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf") from e
    try:
        return GGUFReader(path, "r")
    except Exception as e:  # the reader fails in many ways on a cut-off file (struct, index, reshape errors)
        raise GGUFError(f"{str(path)!r} is damaged or truncated ({type(e).__name__}: {e}); "
                        f"it is {path.stat().st_size:,} bytes long: download or reinstall it again") from e


def field_value(field):
    """One metadata value as Python: str, int, float, bool, or a list of them."""
    from gguf import GGUFValueType

    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if not field.data:
            return []
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8")
    return field.parts[-1].tolist()[0]


def read_metadata(reader) -> dict:
    """Every key/value pair of the file (the GGUF.* bookkeeping fields left out)."""
    return {name: field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def config_from_metadata(metadata: dict, tensor_names: set[str] | None = None) -> dict:
    """A Hugging Face ``config.json``-style dict from the ``{arch}.*`` metadata keys."""
    arch = metadata.get("general.architecture")
    record = gguf_family(arch)

    def get(key, default=None, required=True, kind=None):
        full = f"{arch}.{key}"
        if full not in metadata:
            if required:
                raise GGUFError(f"GGUF metadata lacks {full!r}, which a {arch} model needs")
            return default
        value = metadata[full]
        if kind is int and (type(value) is not int or value < 1):
            raise GGUFError(f"GGUF metadata {full!r} is {value!r}; it must be a positive integer")
        if kind is float and (type(value) not in (int, float) or not 0 < value < float("inf")):
            raise GGUFError(f"GGUF metadata {full!r} is {value!r}; it must be a positive number")
        return value

    if get("rope.scaling.type", None, required=False) not in (None, "none"):
        raise GGUFError(f"this GGUF uses RoPE scaling {get('rope.scaling.type', required=False)!r}, which minilora "
                        "does not read from GGUF; load the Hugging Face safetensors directory instead")
    if tensor_names is not None and "rope_freqs.weight" in tensor_names:
        raise GGUFError("this GGUF carries a rope_freqs tensor (Llama-3.1-style frequency scaling), which minilora "
                        "does not read from GGUF; load the Hugging Face safetensors directory instead")
    n_heads = get("attention.head_count", kind=int)
    hidden = get("embedding_length", kind=int)
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, list):
        raise GGUFError(f"GGUF metadata 'tokenizer.ggml.tokens' is a {type(tokens).__name__}, not a list")
    vocab_size = get("vocab_size", len(tokens) if tokens else None, required=not tokens, kind=int)
    config = {
        "model_type": record.model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length", kind=int),
        "num_hidden_layers": get("block_count", kind=int),
        "num_attention_heads": n_heads,
        "num_key_value_heads": get("attention.head_count_kv", n_heads, required=False, kind=int),
        "head_dim": get("attention.key_length", hidden // n_heads, required=False, kind=int),
        "max_position_embeddings": get("context_length", 2048, required=False, kind=int),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-5, required=False, kind=float),
        "rope_theta": get("rope.freq_base", 10000.0, required=False, kind=float),
        "tie_word_embeddings": tensor_names is not None and "output.weight" not in tensor_names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config[key] is not None and type(config[key]) is not int:
            raise GGUFError(f"GGUF metadata for the {key[:3]} token id is {config[key]!r}, not an integer")
    window = get("attention.sliding_window", None, required=False)
    if window is not None and type(window) is not int:
        raise GGUFError(f"GGUF metadata {arch}.attention.sliding_window is {window!r}, not an integer")
    if window:
        config["sliding_window"] = window
        config["model_type"] = "mistral"
    if tensor_names is not None:  # Qwen2's q/k/v biases, or any family's: the tensors say whether they are there
        config["qkv_bias"] = "blk.0.attn_q.bias" in tensor_names
    return config


def size_keys(metadata: dict) -> dict[str, str]:
    """Which metadata key states each size of the Hugging Face config (for errors that name the file's own key)."""
    arch = metadata.get("general.architecture")
    vocab = f"{arch}.vocab_size" if f"{arch}.vocab_size" in metadata else "len(tokenizer.ggml.tokens)"
    return {"num_hidden_layers": f"{arch}.block_count", "vocab_size": vocab, "hidden_size": f"{arch}.embedding_length",
            "intermediate_size": f"{arch}.feed_forward_length", "num_attention_heads": f"{arch}.attention.head_count",
            "num_key_value_heads": f"{arch}.attention.head_count_kv"}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, kind = m.groups()
        if part in TENSOR_NAMES:
            return f"model.layers.{layer}.{TENSOR_NAMES[part]}.{kind}"
    else:
        m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
        if m and m.group(1) in TENSOR_NAMES:
            return f"{TENSOR_NAMES[m.group(1)]}.{m.group(2)}"
    raise GGUFError(f"GGUF tensor {gguf_name!r} has no counterpart in minilora's Llama-family model")


def dequantize(tensor) -> torch.Tensor:
    """One GGUF tensor -> float32 torch tensor in PyTorch's (out, in) order."""
    from gguf.quants import dequantize as gguf_dequantize

    try:
        array = gguf_dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise GGUFError(f"tensor {tensor.name!r} uses quantization {tensor.tensor_type.name}, which the installed "
                        "gguf package cannot dequantize; upgrade it (pip install -U gguf)") from e
    expected = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions fastest-first
    if array.shape != expected:
        array = array.reshape(expected)
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:  # F32 tensors come straight from the read-only memory map of the file
        array = array.copy()
    return torch.from_numpy(array)


def load_gguf(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Read a GGUF file: (HF-style config dict, float32 state dict with HF names, metadata).

    Quantized tensors are dequantized to float32; q/k rows are put back in rotate-half order.
    """
    reader = open_gguf(path)
    try:
        metadata = read_metadata(reader)
    except (UnicodeDecodeError, ValueError, IndexError, TypeError) as e:
        raise GGUFError(f"{str(path)!r}: its metadata cannot be decoded ({type(e).__name__}: {e}); the file is "
                        "damaged") from e
    names = {t.name for t in reader.tensors}
    try:
        config = config_from_metadata(metadata, names)
        model_config = ModelConfig.from_dict(config)
    except (ValueError, TypeError) as e:  # GGUFError included: each says which key, this says which file
        raise GGUFError(f"GGUF file {str(path)!r}: {e}") from None
    # every size the metadata claims, against the tensors the file holds, before any tensor is dequantized
    shapes = {hf_name(t.name): tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    try:
        check_claimed_sizes(model_config, shapes, f"GGUF file {str(path)!r}", size_keys(metadata))
    except ValueError as e:
        raise GGUFError(str(e)) from None
    permuted = gguf_family(metadata.get("general.architecture")).gguf_permuted_qk
    state_dict: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        try:
            w = dequantize(tensor)
        except GGUFError:
            raise
        except Exception as e:  # a tensor whose bytes run past the end of the file
            raise GGUFError(f"{str(path)!r}: tensor {tensor.name!r} cannot be read ({type(e).__name__}: {e}); "
                            "the file looks truncated: download or reinstall it again") from e
        heads = config["num_attention_heads"] if ".self_attn.q_proj." in name else config["num_key_value_heads"]
        if permuted and (".self_attn.q_proj." in name or ".self_attn.k_proj." in name):
            if w.shape[0] % (2 * heads):
                raise GGUFError(f"{str(path)!r}: tensor {tensor.name!r} has {w.shape[0]} rows, which {heads} heads "
                                "of even size cannot split: the file's head counts do not fit its tensors")
            w = unpermute_qk(w, heads)
        state_dict[name] = w
    return config, state_dict, metadata


# --- writing -----------------------------------------------------------------------------------------------------
GGUF_TYPES = ("f16", "q8_0", "f32")
_GGUF_NAMES = {hf: g for g, hf in TENSOR_NAMES.items()}  # the same table, read the other way


def gguf_name(hf: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight`` (the inverse of `hf_name`)."""
    module, kind = hf.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, layer, rest = module.split(".", 3)
        return f"blk.{layer}.{_GGUF_NAMES[rest]}.{kind}"
    return f"{_GGUF_NAMES[module]}.{kind}"


def tokenizer_metadata(tokenizer) -> dict:
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


def write_gguf(path: str | os.PathLike, tensors: dict[str, torch.Tensor], cfg, tokenizer, quantization: str = "f16",
               name: str = "minilora-model") -> str:
    """Write a llama.cpp GGUF file from Hugging Face-named float tensors and the model's `ModelConfig`.

    ``quantization``: f16, q8_0 or f32; norm weights always stay F32. The rows of W_q and W_k are permuted into
    llama.cpp's interleaved RoPE layout; the tokenizer and the chat template go into the metadata."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    quantization = quantization.lower()
    if quantization not in GGUF_TYPES:
        raise ValueError(f"GGUF quantization {quantization!r}: choose one of {', '.join(GGUF_TYPES)}")
    record = family(cfg.model_type)
    if record.gguf_architecture != "llama" or cfg.attention_bias or cfg.qkv_bias:
        raise ValueError(f"GGUF export supports the plain llama architecture; this model is {cfg.model_type!r}"
                         f"{' with attention biases' if cfg.attention_bias or cfg.qkv_bias else ''}")
    if cfg.rope_scaling:
        raise ValueError("GGUF export does not write RoPE scaling; export a model without rope_scaling")
    if os.path.isdir(path):
        raise IsADirectoryError(f"GGUF path {str(path)!r} is a directory; pass a file name like model.gguf")
    tok = tokenizer_metadata(tokenizer)

    def fill(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, record.gguf_architecture)
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
            if record.gguf_permuted_qk and hf.endswith("q_proj.weight"):
                t = permute_qk(t, cfg.num_attention_heads)  # rotate-half rows -> llama.cpp's interleaved pairs
            elif record.gguf_permuted_qk and hf.endswith("k_proj.weight"):
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

    return write_file(path, fill)

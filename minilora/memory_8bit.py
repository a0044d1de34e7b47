"""Bytes of 8-bit storage: LLM.int8-style weights (`minilora.linear8bit`) and 8-bit AdamW states
(`minilora.train.adamw8bit`), exact to the byte for any shapes, next to 16-bit weights and 32-bit AdamW.

    int8 weight (out, in):   out·in codes + 4·out row scales + for each outlier column: out 16-bit values + 8 (index)
    8-bit AdamW, a tensor:   2·n codes (m and v) + 2·4·ceil(n / 256) absmax      (n ≥ min_8bit_size = 4096)
                             8·n (two float32 moments)                             (smaller tensors)
    32-bit AdamW, a tensor:  2·n·(bytes of the state dtype)

`trainable_tensor_sizes` lists the numel of every trainable tensor of full fine-tuning or LoRA for a `ModelConfig`,
because the 8-bit rule applies tensor by tensor (a norm of 576 values stays 32-bit).
"""
from __future__ import annotations

import torch

from .memory import ALL_LINEAR, block_linear_shapes, param_counts

STATE_FORMATS = ("adamw", "adamw_8bit")
ADAM8_BLOCKSIZE, MIN_8BIT_SIZE = 256, 4096  # bitsandbytes' (and minilora's) blockwise 8-bit optimizer


def _nbytes(dtype) -> int:
    return dtype if isinstance(dtype, int) else torch.empty(0, dtype=dtype).element_size()


def int8_weight_bytes(out_features: int, in_features: int, outlier_columns: int = 0,
                      outlier_dtype=torch.bfloat16) -> dict:
    """Exact bytes of one `Linear8bit` weight: int8 codes, float32 row scales, outlier columns (+ int64 indices)."""
    codes, scales = out_features * in_features, 4 * out_features
    outliers = outlier_columns * (out_features * _nbytes(outlier_dtype) + 8)
    return {"codes": codes, "scales": scales, "outliers": outliers, "total": codes + scales + outliers}


def int8_model_weight_bytes(config, dtype=torch.bfloat16) -> dict:
    """Weights of a model loaded with load_in_8bit: block linears int8 (no outlier columns), the rest in `dtype`."""
    L = config.num_hidden_layers
    int8 = sum(int8_weight_bytes(o, i)["total"] for o, i in block_linear_shapes(config).values()) * L
    counts = param_counts(config)
    rest = (counts["total"] - counts["block_linear"]) * _nbytes(dtype)
    return {"int8_linear": int8, "dense": rest, "total": int8 + rest}


def adamw8bit_state_bytes(numel: int, blocksize: int = ADAM8_BLOCKSIZE, min_8bit_size: int = MIN_8BIT_SIZE) -> int:
    """Bytes of m and v for one tensor of `numel` values under 8-bit AdamW."""
    if numel < min_8bit_size:
        return 8 * numel  # two float32 moments
    return 2 * numel + 2 * 4 * -(-numel // blocksize)  # two uint8 codes + two float32 absmax per block


def optimizer_state_bytes(tensor_sizes, optim: str = "adamw", state_dtype=torch.float32) -> int:
    """Bytes of AdamW's state for tensors of the given sizes: "adamw" (2 moments in `state_dtype`) or
    "adamw_8bit"."""
    if optim not in STATE_FORMATS:
        raise ValueError(f"optim={optim!r}: choose one of {', '.join(STATE_FORMATS)}")
    if optim == "adamw_8bit":
        return sum(adamw8bit_state_bytes(n) for n in tensor_sizes)
    return sum(2 * n * _nbytes(state_dtype) for n in tensor_sizes)


def trainable_tensor_sizes(config, method: str = "lora", r: int = 16, target_modules=ALL_LINEAR) -> list[int]:
    """numel of every trainable tensor: all parameters ("full") or LoRA's A (r, in) and B (out, r) ("lora")."""
    L, C = config.num_hidden_layers, config.hidden_size
    shapes = block_linear_shapes(config)
    if method == "lora":
        return [n for t in target_modules for n in (r * shapes[t][1], shapes[t][0] * r)] * L
    if method != "full":
        raise ValueError(f"method={method!r}: choose 'full' or 'lora'")
    counts = param_counts(config)
    per_block = [o * i for o, i in shapes.values()] + [C, C]  # 7 linears + 2 norms
    qkv = [shapes[t][0] for t in ("q_proj", "k_proj", "v_proj")]
    biases = qkv if (config.qkv_bias or config.attention_bias) else []
    biases += [C] if config.attention_bias else []
    head = [counts["lm_head"]] if counts["lm_head"] else []
    sizes = (per_block + biases) * L + [C, counts["embedding"]] + head  # + final norm, embedding, head
    assert sum(sizes) == counts["total"]
    return sizes

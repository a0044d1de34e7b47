"""Where the memory goes: bytes of weights, gradients, optimizer state and activations for full fine-tuning,
LoRA and QLoRA, for any `ModelConfig`.

The four terms (training with AdamW, whose two moment buffers have the parameter's dtype, as torch.optim.AdamW):

    weights      every parameter, in its storage: 16-bit, or NF4 codes + quantization state for QLoRA's block linears
    gradients    one per TRAINABLE parameter, in its dtype          (full: all of them; LoRA: only A and B)
    optimizer    2 per trainable parameter (AdamW's m and v)
    activations  what the forward keeps for the backward: per token and per layer, see `activation_bytes`

NF4's quantization state costs, per parameter, 32/blocksize bits of float32 absmax (0.5 bits at 64), or with double
quantization 8/blocksize + 32/(blocksize·256) bits (0.127 bits): `quant_state_bits_per_param`.

`minilora.memory.measure` counts the real tensors of a model so the predictions can be checked
(tests/test_memory.py and lessons/week4_memory.py do exactly that for SmolLM2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..models.config import ModelConfig

__all__ = ["ALL_LINEAR", "GiB", "METHODS", "MemoryEstimate", "activation_bytes", "block_linear_shapes",
           "estimate_memory", "lora_param_count", "nf4_bytes", "param_counts", "quant_state_bits_per_param", "table"]

METHODS = ("full", "lora", "qlora")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GiB = 2 ** 30


def _dtype_bytes(dtype) -> int:
    if isinstance(dtype, int):
        return dtype
    return torch.empty(0, dtype=dtype).element_size()


# --- parameters -----------------------------------------------------------------------------------------------------
def block_linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer in ONE decoder block."""
    C, I = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return {"q_proj": (q, C), "k_proj": (kv, C), "v_proj": (kv, C), "o_proj": (C, q),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Parameter counts by group: block linear weights, biases, norms, embedding, head (0 when tied)."""
    L, C, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    shapes = block_linear_shapes(config)
    linear = L * sum(o * i for o, i in shapes.values())
    bias = 0
    if config.qkv_bias or config.attention_bias:
        bias += L * (shapes["q_proj"][0] + 2 * shapes["k_proj"][0])
    if config.attention_bias:
        bias += L * C
    counts = {"block_linear": linear, "bias": bias, "norms": (2 * L + 1) * C, "embedding": V * C,
              "lm_head": 0 if config.tie_word_embeddings else V * C}
    counts["total"] = sum(counts.values())
    return counts


def lora_param_count(config: ModelConfig, r: int = 16, target_modules=ALL_LINEAR) -> int:
    """r·(in + out) per adapted matrix: A is (r, in), B is (out, r)."""
    shapes = block_linear_shapes(config)
    unknown = [t for t in target_modules if t not in shapes]
    if unknown:
        raise ValueError(f"unknown target modules {unknown}: choose from {list(shapes)}")
    return config.num_hidden_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in target_modules)


# --- NF4 ------------------------------------------------------------------------------------------------------------
def quant_state_bits_per_param(blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = 256) -> float:
    """Bits of quantization state per parameter (on top of the 4 bits of the code)."""
    if double_quant:  # an 8-bit code per block + one float32 scale per dq_blocksize blocks
        return 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 32 / blocksize  # one float32 absmax per block


def nf4_bytes(numel: int, blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = 256) -> dict:
    """Exact bytes of one NF4 tensor of `numel` values: codes and state (incl. the offset scalar)."""
    blocks = -(-numel // blocksize)
    codes = -(-numel // 2)
    state = blocks + 4 * -(-blocks // dq_blocksize) + 4 if double_quant else 4 * blocks
    return {"codes": codes, "state": state, "total": codes + state}


# --- activations ----------------------------------------------------------------------------------------------------
def activation_bytes(config: ModelConfig, batch_size: int, seq_len: int, dtype=torch.bfloat16,
                     gradient_checkpointing: bool = False) -> int:
    """Bytes the forward keeps for the backward (minilora's Llama with the PyTorch reference ops).

    Per token and layer, in the activation dtype:
      attention half: the norm's input, its output, the projections' input (3·C); q, the repeated k and v and
                      SDPA's output (4·heads·hd); o_proj's input (heads·hd)
      MLP half:       the norm's input, output and the projections' input (3·C); gate, up, SwiGLU's output and
                      down_proj's input (4·I)
    plus the logits (V a token) that the loss keeps. With gradient checkpointing only each layer's input (C) is
    kept, and one layer's full set lives again while its backward runs. Frozen 4-bit weights save nothing extra
    (Linear4bit re-dequantizes in backward); LoRA's A·x (r a token) is small and left out.
    """
    C, I, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    heads_hd = config.num_attention_heads * config.head_dim
    per_layer = 6 * C + 5 * heads_hd + 4 * I  # values per token
    tokens = batch_size * seq_len
    kept = L * C + per_layer if gradient_checkpointing else L * per_layer
    return (tokens * (kept + 3 * C) + tokens * V) * _dtype_bytes(dtype)  # + final norm (3·C) and logits


# --- the estimate ---------------------------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    method: str
    weights: int  # bytes of all parameters as stored (for QLoRA: NF4 codes + 16-bit rest, state excluded)
    quant_state: int  # bytes of absmax / double-quant state (QLoRA only)
    adapter: int  # bytes of the LoRA A and B matrices
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.quant_state + self.adapter + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def row(self, unit: int = GiB) -> str:
        cells = [self.weights + self.quant_state + self.adapter, self.gradients, self.optimizer, self.activations,
                 self.total]
        return f"{self.method:6s}" + "".join(f"{c / unit:12.3f}" for c in cells)


def estimate_memory(config: ModelConfig, method: str = "qlora", *, r: int = 16, target_modules=ALL_LINEAR,
                    dtype=torch.bfloat16, adapter_dtype=None, batch_size: int = 1, seq_len: int = 2048,
                    gradient_checkpointing: bool = True, blocksize: int = 64, double_quant: bool = True,
                    optimizer_states: int = 2) -> MemoryEstimate:
    """Predict the training memory of `method` ("full", "lora", "qlora") for a model shaped by `config`.

    dtype: the weights' (and activations') dtype. adapter_dtype: LoRA A/B's dtype — by default `dtype` for LoRA
    and float32 for QLoRA, as `minilora.lora.LoraLinear` chooses. optimizer_states: 2 for AdamW (m and v).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    wb = _dtype_bytes(dtype)
    counts = param_counts(config)
    act = activation_bytes(config, batch_size, seq_len, dtype, gradient_checkpointing)
    if method == "full":
        n = counts["total"]
        return MemoryEstimate("full", n * wb, 0, 0, n * wb, optimizer_states * n * wb, act)
    ab = _dtype_bytes(adapter_dtype if adapter_dtype is not None else (torch.float32 if method == "qlora" else dtype))
    n_lora = lora_param_count(config, r, target_modules)
    adapter, grads, opt = n_lora * ab, n_lora * ab, optimizer_states * n_lora * ab
    if method == "lora":
        return MemoryEstimate("lora", counts["total"] * wb, 0, adapter, grads, opt, act)
    codes = state = 0
    for o, i in block_linear_shapes(config).values():
        b = nf4_bytes(o * i, blocksize, double_quant)
        codes += config.num_hidden_layers * b["codes"]
        state += config.num_hidden_layers * b["state"]
    dense = (counts["total"] - counts["block_linear"]) * wb  # embedding, norms, head, biases stay 16-bit
    return MemoryEstimate("qlora", codes + dense, state, adapter, grads, opt, act)


def table(config: ModelConfig, title: str = "", unit: int = GiB, **kwargs) -> str:
    """The full / LoRA / QLoRA accounting table as text (GiB by default)."""
    name = "GiB" if unit == GiB else f"×{unit} B"
    head = f"{'':6s}{'weights':>12s}{'grads':>12s}{'optimizer':>12s}{'activations':>12s}{'total':>12s}  ({name})"
    lines = [title] if title else []
    lines.append(head)
    lines += [estimate_memory(config, m, **kwargs).row(unit) for m in METHODS]
    return "\n".join(lines)

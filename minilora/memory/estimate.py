"""Where the memory goes: bytes of weights, gradients, optimizer state and activations for full fine-tuning,
LoRA and QLoRA, for any `ModelConfig`.

The four terms (training with AdamW, whose two moment buffers have the parameter's dtype, as torch.optim.AdamW):

    weights      every parameter, in its storage: 16-bit, or NF4 codes + quantization state for QLoRA's block linears
    gradients    one per TRAINABLE parameter, in its dtype          (full: all of them; LoRA: only A and B)
    optimizer    2 per trainable parameter (AdamW's m and v)
    activations  what the forward keeps for the backward: per token and per layer, see `activation_bytes`

NF4's quantization state costs, per parameter, 32/blocksize bits of float32 absmax (0.5 bits at 64), or with double
quantization 8/blocksize + 32/(blocksize·256) bits (0.127 bits): `quant_state_bits_per_param`.

8-bit storage, exact to the byte (`minilora.linear8bit`, `minilora.train.adamw8bit`):

    int8 weight (out, in):   out·in codes + 4·out row scales + for each outlier column: out 16-bit values + 8 (index)
    8-bit AdamW, a tensor:   2·n codes (m and v) + 2·4·ceil(n / 256) absmax      (n ≥ min_8bit_size = 4096)
                             8·n (two float32 moments)                             (smaller tensors)

The 8-bit rule applies tensor by tensor (a norm of 576 values keeps 32-bit states): `trainable_tensor_sizes`.

`minilora.memory.measure` counts the real tensors of a model so the predictions can be checked
(tests/test_memory.py and lessons/week4_memory.py do exactly that for SmolLM2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..models.config import ModelConfig
from ..quant.blockwise import DOUBLE_QUANT_BLOCKSIZE, NF4_BLOCKSIZE
from ..quant.dynamic8 import MIN_8BIT_SIZE, OPTIMIZER_BLOCKSIZE

__all__ = ["ALL_LINEAR", "GiB", "METHODS", "MemoryEstimate", "STAGES", "STATE_FORMATS", "activation_bytes",
           "adamw8bit_state_bytes", "block_linear_shapes", "estimate_memory", "estimate_memory_per_rank",
           "int8_model_weight_bytes", "int8_weight_bytes", "lora_param_count", "nf4_bytes", "optimizer_state_bytes",
           "param_counts", "quant_state_bits_per_param", "table", "trainable_tensor_sizes"]

METHODS = ("full", "lora", "qlora")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GiB = 2 ** 30


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype (an int passes through)."""
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
def quant_state_bits_per_param(blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                               dq_blocksize: int = DOUBLE_QUANT_BLOCKSIZE) -> float:
    """Bits of quantization state per parameter (on top of the 4 bits of the code)."""
    if double_quant:  # an 8-bit code per block + one float32 scale per dq_blocksize blocks
        return 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 32 / blocksize  # one float32 absmax per block


def nf4_bytes(numel: int, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True, dq_blocksize: int = DOUBLE_QUANT_BLOCKSIZE) -> dict:
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
    return (tokens * (kept + 3 * C) + tokens * V) * dtype_bytes(dtype)  # + final norm (3·C) and logits


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
                    gradient_checkpointing: bool = True, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                    optimizer_states: int = 2) -> MemoryEstimate:
    """Predict the training memory of `method` ("full", "lora", "qlora") for a model shaped by `config`.

    dtype: the weights' (and activations') dtype. adapter_dtype: LoRA A/B's dtype — by default `dtype` for LoRA
    and float32 for QLoRA, as `minilora.lora.LoraLinear` chooses. optimizer_states: 2 for AdamW (m and v).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    wb = dtype_bytes(dtype)
    counts = param_counts(config)
    act = activation_bytes(config, batch_size, seq_len, dtype, gradient_checkpointing)
    if method == "full":
        n = counts["total"]
        return MemoryEstimate("full", n * wb, 0, 0, n * wb, optimizer_states * n * wb, act)
    ab = dtype_bytes(adapter_dtype if adapter_dtype is not None else (torch.float32 if method == "qlora" else dtype))
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


# --- several GPUs: what each rank holds ---------------------------------------------------------------------------
STAGES = ("ddp", "zero1", "zero2", "zero3")


def estimate_memory_per_rank(config: ModelConfig, method: str = "qlora", world_size: int = 1, stage: str = "ddp",
                             **kwargs) -> MemoryEstimate:
    """The bytes ONE of ``world_size`` ranks holds, for data parallelism with each ZeRO stage (kwargs as
    `estimate_memory`; batch_size is the per-rank batch, so activations are per rank already).

    ddp    every rank keeps everything: a full copy of weights, gradients and optimizer state
    zero1  the optimizer state is split: each rank updates 1/N of the parameters
    zero2  the gradients are split too (reduce-scatter instead of all-reduce)
    zero3  the weights are split too (FSDP's fully_shard): a layer is all-gathered just before it runs, so on top
           of its 1/N a rank briefly holds one layer whole (not counted here, like the activations' peaks)
    Splitting rounds up (ceil), as FSDP pads each tensor's first dimension to a multiple of N."""
    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: choose one of {', '.join(STAGES)} (zero3 = FSDP)")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    e = estimate_memory(config, method, **kwargs)
    level = STAGES.index(stage)

    def split(nbytes: int, from_level: int) -> int:
        return -(-nbytes // world_size) if level >= from_level else nbytes
    return MemoryEstimate(e.method, split(e.weights, 3), split(e.quant_state, 3), split(e.adapter, 3),
                          split(e.gradients, 2), split(e.optimizer, 1), e.activations)


def table(config: ModelConfig, title: str = "", unit: int = GiB, **kwargs) -> str:
    """The full / LoRA / QLoRA accounting table as text (GiB by default)."""
    name = "GiB" if unit == GiB else f"×{unit} B"
    head = f"{'':6s}{'weights':>12s}{'grads':>12s}{'optimizer':>12s}{'activations':>12s}{'total':>12s}  ({name})"
    lines = [title] if title else []
    lines.append(head)
    lines += [estimate_memory(config, m, **kwargs).row(unit) for m in METHODS]
    return "\n".join(lines)


# --- 8-bit weights and optimizer states ---------------------------------------------------------------------------
STATE_FORMATS = ("adamw", "adamw_8bit")


def int8_weight_bytes(out_features: int, in_features: int, outlier_columns: int = 0,
                      outlier_dtype=torch.bfloat16) -> dict:
    """Exact bytes of one `Linear8bit` weight: int8 codes, float32 row scales, outlier columns (+ int64 indices)."""
    codes, scales = out_features * in_features, 4 * out_features
    outliers = outlier_columns * (out_features * dtype_bytes(outlier_dtype) + 8)
    return {"codes": codes, "scales": scales, "outliers": outliers, "total": codes + scales + outliers}


def int8_model_weight_bytes(config, dtype=torch.bfloat16) -> dict:
    """Weights of a model loaded with load_in_8bit: block linears int8 (no outlier columns), the rest in `dtype`."""
    L = config.num_hidden_layers
    int8 = sum(int8_weight_bytes(o, i)["total"] for o, i in block_linear_shapes(config).values()) * L
    counts = param_counts(config)
    rest = (counts["total"] - counts["block_linear"]) * dtype_bytes(dtype)
    return {"int8_linear": int8, "dense": rest, "total": int8 + rest}


def adamw8bit_state_bytes(numel: int, blocksize: int = OPTIMIZER_BLOCKSIZE, min_8bit_size: int = MIN_8BIT_SIZE) -> int:
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
    return sum(2 * n * dtype_bytes(state_dtype) for n in tensor_sizes)


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

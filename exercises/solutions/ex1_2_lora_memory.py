"""Exercise 1.2 — reference solution."""
from minilora.models import ModelConfig

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    C, I, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q_out, kv_out = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {"q_proj": (C, q_out), "k_proj": (C, kv_out), "v_proj": (C, kv_out), "o_proj": (q_out, C),
            "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}


def lora_parameter_count(config: ModelConfig, r: int, target_modules=PROJECTIONS) -> int:
    shapes = projection_shapes(config)
    unknown = [t for t in target_modules if t not in shapes]
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; choose from {PROJECTIONS}")
    per_layer = sum(r * (shapes[t][0] + shapes[t][1]) for t in target_modules)  # A (r, in) + B (out, r)
    return per_layer * config.num_hidden_layers


def model_parameter_count(config: ModelConfig) -> int:
    shapes = projection_shapes(config)
    C, V = config.hidden_size, config.vocab_size
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * C  # seven matrices + two RMSNorm weights
    if config.qkv_bias or config.attention_bias:
        per_layer += sum(shapes[p][1] for p in ("q_proj", "k_proj", "v_proj"))
    if config.attention_bias:
        per_layer += C  # o_proj's bias
    embeddings = V * C if config.tie_word_embeddings else 2 * V * C
    return embeddings + config.num_hidden_layers * per_layer + C  # + the final norm


def training_bytes(frozen: int, trainable: int, weight_bytes: int = 2, grad_bytes: int = 2,
                   optimizer_bytes: int = 4) -> int:
    return (frozen + trainable) * weight_bytes + trainable * (grad_bytes + optimizer_bytes)

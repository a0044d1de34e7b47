"""The model shapes the end-to-end benchmarks share: minilora's step (bench_e2e) and the HF anchor (anchor_hf)
time the same catalogue shapes, and both shrink to the same tiny model for --smoke runs on a CPU."""
from __future__ import annotations

from minilora.models.config import ModelConfig
from minilora.models.registry import catalogue_config

SHAPES = {"1b": ("llama-3.2-1b", 4), "8b": ("llama-3-8b", 2)}  # catalogue name, batch (S2048)


def smoke_config() -> ModelConfig:
    """SmolLM2-135M's widths, 2 blocks, a small vocabulary: a step takes a fraction of a second on a CPU."""
    fields = catalogue_config("smollm2-135m").to_dict()
    fields.update(num_hidden_layers=2, vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    return ModelConfig.from_dict(fields)

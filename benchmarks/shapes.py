"""The model shapes the end-to-end benchmarks share: minilora's step (bench_e2e) and the HF anchor (anchor_hf)
time the same catalogue shapes, and both shrink to the same tiny model for --smoke runs on a CPU."""
from __future__ import annotations

import torch

from minilora.models.config import ModelConfig
from minilora.models.registry import catalogue_config

SHAPES = {"1b": ("llama-3.2-1b", 4), "8b": ("llama-3-8b", 2)}  # catalogue name, batch (S2048)


def smoke_config() -> ModelConfig:
    """SmolLM2-135M's widths, 2 blocks, a small vocabulary: a step takes a fraction of a second on a CPU."""
    fields = catalogue_config("smollm2-135m").to_dict()
    fields.update(num_hidden_layers=2, vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    return ModelConfig.from_dict(fields)


def shape_of(args):
    """(device, model name, config, batch, seq, dtype) of --shape, or of the tiny smoke model (which also sets
    one rep and no warm-up: the timings of a smoke run mean nothing)."""
    device = "cpu" if args.smoke else "cuda"
    name, batch = SHAPES[args.shape]
    if args.smoke:
        config, batch, seq, dtype = smoke_config(), 2, 32, torch.float32
        name, args.reps, args.warmup = "tiny (smoke)", 1, 0
    else:
        config, seq, dtype = catalogue_config(name), args.seq, torch.bfloat16
    return device, name, config, getattr(args, "batch", None) or batch, seq, dtype

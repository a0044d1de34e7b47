"""Qwen2 = Llama + a bias on the q, k and v projections (not on o). Everything else is inherited."""
import dataclasses

from .config import ModelConfig
from .mistral import MistralForCausalLM


class Qwen2ForCausalLM(MistralForCausalLM):
    """Inherits Mistral's optional sliding window (off unless the config's use_sliding_window is true)."""

    def __init__(self, config: ModelConfig):
        super().__init__(dataclasses.replace(config, qkv_bias=True))

"""Qwen2 = Llama + a bias on the q, k and v projections (not on o). Everything else is inherited."""
import dataclasses

from .config import ModelConfig
from .mistral import MistralForCausalLM


class Qwen2ForCausalLM(MistralForCausalLM):
    """Inherits Mistral's optional sliding window (off unless the config's use_sliding_window is true)."""

    def __init__(self, config: ModelConfig):
        super().__init__(dataclasses.replace(config, qkv_bias=True))


def qwen2_config_from_hf(d: dict) -> dict:
    """Qwen2's config.json: q/k/v biases are implied, and the window size it carries is off unless
    use_sliding_window says otherwise."""
    d.setdefault("qkv_bias", True)
    if not d.get("use_sliding_window", False):
        d["sliding_window"] = None
    return d


def qwen2_config_to_hf(d: dict) -> dict:
    """The keys transformers' Qwen2Config expects: the window switched off explicitly."""
    d["use_sliding_window"] = False
    d.pop("sliding_window", None)
    return d

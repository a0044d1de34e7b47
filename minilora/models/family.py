"""One record per model family: what minilora knows about an architecture besides its module code.

A family is named by Hugging Face's ``model_type`` and answers every question the file formats ask about it: which
class to build, which transformers class a saved ``config.json`` names, what llama.cpp calls it in a GGUF file and
whether its converter reordered the rows of W_q and W_k, and which ``config.json`` keys are its own. The built-in
families are registered in `registry` with the same `register_model` a user calls, so a family added by hand saves
and reloads as itself. This module imports nothing of minilora: the config (below the model classes) reads it too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    model_type: str  # config.json's "model_type"
    model_class: type  # the module built for it: a LlamaForCausalLM subclass
    hf_architecture: str  # the transformers class config.json names under "architectures"
    gguf_architecture: str | None = None  # llama.cpp's general.architecture; None: no GGUF counterpart
    gguf_permuted_qk: bool = False  # the GGUF converter interleaved W_q/W_k rows for llama.cpp's RoPE (io/gguf.py)
    # The family's own config.json keys: each hook takes a dict and returns it changed, on the way in (before the
    # ModelConfig is built) and on the way out (after the common keys are written).
    config_from_hf: Callable[[dict], dict] | None = None
    config_to_hf: Callable[[dict], dict] | None = None


# model_type -> its record; `registry.register_model` fills it
MODEL_TYPES: dict[str, ModelFamily] = {}


def family(model_type: str) -> ModelFamily:
    """The record of ``model_type``, or one error that lists the known families and how to add one."""
    try:
        return MODEL_TYPES[model_type]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model_type {model_type!r}; supported: {', '.join(sorted(MODEL_TYPES))}. "
                         "Add one with minilora.models.register_model(model_type, cls).") from None


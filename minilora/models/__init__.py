"""The Llama family: config, model, Mistral/Qwen2 subclasses, registry and catalogue."""
from .config import ModelConfig
from .family import ModelFamily
from .llama import CausalLMOutput, LlamaForCausalLM
from .mistral import MistralForCausalLM
from .qwen2 import Qwen2ForCausalLM
from .registry import (
                       CATALOGUE,
                       MODEL_TYPES,
                       build_model,
                       catalogue_config,
                       from_catalogue,
                       model_class,
                       register_model,
                       search_catalogue,
)

__all__ = ["ModelConfig", "ModelFamily", "CausalLMOutput", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
           "CATALOGUE", "MODEL_TYPES", "build_model", "catalogue_config", "from_catalogue", "model_class",
           "register_model", "search_catalogue"]

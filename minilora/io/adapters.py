"""LoRA adapters in PEFT's on-disk format, so `peft.PeftModel.from_pretrained` opens what minilora saves.

A directory with two files:
- ``adapter_config.json``: ``peft_type: LORA``, r, lora_alpha, target_modules, use_rslora, …
- ``adapter_model.safetensors``: for every adapted layer, ``base_model.model.<layer name>.lora_A.weight`` (r, in)
  and ``….lora_B.weight`` (out, r). The ``base_model.model.`` prefix is PEFT's wrapper path.

Loading checks every key and every shape against the model: PEFT itself only warns about keys it cannot place and
then runs with the adapter half-applied, which is worse than an error.
"""
from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import save_file

from ..finite import check_finite
from ..lora import get_peft_model, lora_layers, remove_lora
from .atomic import check_save_target, write_dir

PREFIX = "base_model.model."
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


class AdapterMismatchError(ValueError):
    """The adapter on disk was made for another model (or other LoRA settings)."""


def adapter_config(model, base_model_name_or_path: str | None = None) -> dict:
    cfg = getattr(model, "peft_config", None)
    layers = lora_layers(model)
    if not layers or cfg is None:
        raise ValueError("this model has no LoRA adapters to save; call FastLanguageModel.get_peft_model first")
    name = base_model_name_or_path or getattr(model, "name_or_path", None) or getattr(model.config, "extra", {}).get(
        "_name_or_path")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": name,
        "r": cfg["r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "target_modules": cfg["target_modules"] if isinstance(cfg["target_modules"], str)
        else sorted(cfg["target_modules"]), "bias": cfg.get("bias", "none"),
        "use_rslora": cfg.get("use_rslora", False), "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "use_dora": False,
    }


def _whole(t: torch.Tensor) -> torch.Tensor:
    # a weight sharded across ranks (FSDP2's DTensor) is gathered whole: every rank must call this together
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in lora_layers(model):
        out[f"{PREFIX}{name}.lora_A.weight"] = _whole(layer.lora_A.weight.detach()).contiguous().cpu()
        out[f"{PREFIX}{name}.lora_B.weight"] = _whole(layer.lora_B.weight.detach()).contiguous().cpu()
    return out


def write_adapter(model, directory: str, base_model_name_or_path: str | None = None,
                  tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write both adapter files into ``directory`` (an existing, staging directory: see `save_adapter`).
    ``tensors``: `adapter_state_dict(model)` already gathered (by every rank of a sharded model)."""
    config = adapter_config(model, base_model_name_or_path)
    tensors = adapter_state_dict(model) if tensors is None else tensors
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)


def save_adapter(model, directory: str, base_model_name_or_path: str | None = None, overwrite: bool = False) -> str:
    """Save the adapter as the directory ``directory``, swapped in whole (`minilora.io.atomic.write_dir`).
    A non-empty ``directory`` is refused unless ``overwrite=True``; so is one the model was loaded from."""
    check_save_target(directory, getattr(model, "loaded_from", ()) or (), overwrite)
    return write_dir(directory, lambda tmp: write_adapter(model, tmp, base_model_name_or_path))


def read_adapter(directory: str) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg_path, w_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(cfg_path) or not os.path.isfile(w_path):
        raise FileNotFoundError(f"{directory!r} is not a LoRA adapter directory: it needs {CONFIG_NAME} and "
                                f"{WEIGHTS_NAME} (as written by save_adapter or PEFT's save_pretrained)")
    from .safetensors_dir import read_json, read_safetensors
    config = read_json(cfg_path)
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path!r} is damaged: it holds a JSON {type(config).__name__}, not an object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path} describes a {config.get('peft_type')} adapter; minilora loads LoRA only")
    return config, read_safetensors(w_path)


MAX_SCALING = 65504.0  # float16's largest value: an update scaled by more overflows to inf in half precision


def _check_config(config: dict, directory: str) -> list[str] | str:
    """The adapter's target modules, once every value has been checked for its type and range, and every setting
    minilora cannot honour has been refused. Each error names the file and the key."""
    path = os.path.join(directory, CONFIG_NAME)

    def bad(key: str, want: str) -> AdapterMismatchError:
        return AdapterMismatchError(f"{path}: {key!r} is {config.get(key)!r}; it must be {want} (the file is damaged "
                                    "or was not written by PEFT or minilora)")

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for key in ("use_dora", "use_rslora"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise bad(key, "true or false")
    if config.get("use_dora"):
        raise AdapterMismatchError(f"{directory} is a DoRA adapter; minilora loads plain LoRA adapters only")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise AdapterMismatchError(f"{directory} sets {key} {config[key]} (per-module rank or alpha), which "
                                       "minilora does not support — retrain with one r and lora_alpha for all modules")
    for key in ("r", "lora_alpha"):
        if not is_number(config.get(key)):
            raise AdapterMismatchError(f"{path} has no numeric {key!r}: is it a LoRA adapter?")
    r, alpha = config["r"], config["lora_alpha"]
    if not isinstance(r, int) or r < 1:
        raise bad("r", "a positive integer (the LoRA rank)")
    if not (math.isfinite(alpha) and alpha > 0):
        raise bad("lora_alpha", "a finite number > 0")
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    if scaling > MAX_SCALING:
        raise AdapterMismatchError(f"{path}: lora_alpha={alpha!r} with r={r} scales the update by {scaling:.3g}, "
                                   f"beyond {MAX_SCALING:g} (float16's range) — every output would be inf or NaN; the "
                                   "file is damaged (PEFT adapters use lora_alpha of the order of r)")
    dropout = config.get("lora_dropout", 0.0)
    if dropout is not None and not (is_number(dropout) and 0 <= dropout < 1):
        raise bad("lora_dropout", "a number in [0, 1)")
    targets = config.get("target_modules") or []  # a string is a regular expression, as in PEFT
    if not isinstance(targets, str) and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise bad("target_modules", "a list of module names or a regular expression string")
    return targets if isinstance(targets, str) else list(targets)


def load_adapter(model, directory: str, verbose: bool = False):
    """Attach (if needed) and fill LoRA layers from a PEFT-format directory, with the adapter's own r, lora_alpha
    and use_rslora. Refuses adapters for another model; a refused adapter leaves the model as it was."""
    config, tensors = read_adapter(directory)
    targets = _check_config(config, directory)
    if lora_layers(model):
        _fill(model, config, tensors, directory)
        return model
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        try:
            get_peft_model(model, r=config["r"], target_modules=targets, lora_alpha=config["lora_alpha"],
                           lora_dropout=config.get("lora_dropout") or 0.0, use_rslora=bool(config.get("use_rslora")),
                           random_state=None, verbose=verbose)
        except (ValueError, TypeError) as e:
            raise AdapterMismatchError(f"the adapter in {directory} does not fit this model: {e}") from None
        _fill(model, config, tensors, directory)
    except BaseException:  # put the model back as it was: no LoRA layers, the same trainable parameters
        remove_lora(model)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))
        raise
    return model


def _fill(model, config: dict, tensors: dict[str, torch.Tensor], directory: str) -> None:
    """Check every tensor against the model's LoRA layers, then (only then) copy them and set the scaling."""
    layers = dict(lora_layers(model))
    expected = {}
    for name, layer in layers.items():
        expected[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight
        expected[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight
    # PEFT may name the weights "….lora_A.default.weight" in memory but writes them without the adapter name
    found = {k.replace(".default.", "."): v for k, v in tensors.items()}
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if unknown or missing:
        raise AdapterMismatchError(
            f"the adapter in {directory} was made for a different model or other target modules: "
            f"{len(unknown)} of its tensors have no place in this model (e.g. {unknown[:2]}) and {len(missing)} "
            f"LoRA weights of this model are not in it (e.g. {missing[:2]}). Load it on the base model it was "
            f"trained from ({config.get('base_model_name_or_path')!r}) with the same target_modules.")
    for key, target in expected.items():
        if found[key].shape != target.shape:
            raise AdapterMismatchError(
                f"{key}: the adapter holds shape {tuple(found[key].shape)} but this model needs {tuple(target.shape)}"
                f" — the adapter was made for a model with other layer sizes (base "
                f"{config.get('base_model_name_or_path')!r}) or another rank r")
    if any(layer.r != config["r"] for layer in layers.values()):
        raise AdapterMismatchError(f"{directory} says r={config['r']} but its tensors and this model's LoRA layers "
                                   "have another rank: the adapter_config.json does not belong to these weights")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise AdapterMismatchError(f"this model's LoRA layers are merged (e.g. {merged[0]}): call unmerge_lora(model) "
                                   "before loading another adapter into them")
    not_float = next((k for k in expected if not found[k].is_floating_point()), None)
    if not_float is not None:  # integers would be converted to floats without a word
        raise AdapterMismatchError(f"{os.path.join(directory, WEIGHTS_NAME)}: tensor {not_float!r} is stored as "
                                   f"{found[not_float].dtype}; LoRA weights are floating point numbers")
    check_finite(((k, found[k]) for k in expected), os.path.join(directory, WEIGHTS_NAME),
                 "the adapter is damaged or its training diverged: use an earlier checkpoint")
    alpha, rslora = config["lora_alpha"], bool(config.get("use_rslora", False))
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(found[key].to(target.dtype))
    for layer in layers.values():
        layer.set_scaling(alpha, rslora)
    if isinstance(getattr(model, "peft_config", None), dict):
        model.peft_config.update(r=config["r"], lora_alpha=alpha, use_rslora=rslora)

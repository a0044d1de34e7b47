"""Read a Hugging Face model directory: ``config.json`` plus weights in safetensors, one file or sharded.

A sharded checkpoint has ``model.safetensors.index.json`` whose ``weight_map`` says which shard file holds each
tensor (``{"model.embed_tokens.weight": "model-00001-of-00002.safetensors", …}``). safetensors is a flat header of
names, dtypes and byte offsets followed by raw bytes: loading it runs no code, unlike the pickles of
``pytorch_model.bin``, which minilora refuses to open.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); the download may be incomplete") from e


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a Hugging Face model directory, as a dict."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{str(directory)!r} is not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} has no {CONFIG_FILE}: it is not a Hugging Face model directory "
                                "(save one with model.save_pretrained(dir) in transformers)")
    config = read_json(path)
    if "model_type" not in config:
        raise ValueError(f"{str(path)!r} has no 'model_type', so the architecture is unknown")
    return config


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files that hold the weights, checked to exist."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{str(index)!r} has no 'weight_map': the index file is damaged")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"shard {missing[0]!r} named in {INDEX_FILE} is missing from {str(directory)!r}"
                                    f" ({len(missing)} of {len(shards)} shards missing: {', '.join(missing)}); "
                                    "download the complete checkpoint")
        return [directory / s for s in shards]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        raise ValueError(f"{str(directory)!r} holds only pickle weights (*.bin/*.pt), which minilora never loads "
                         "because unpickling can run arbitrary code; convert them to safetensors first "
                         "(transformers: model.save_pretrained(dir, safe_serialization=True))")
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if others:
        raise FileNotFoundError(f"{str(directory)!r} has safetensors files {others} but neither {SINGLE_FILE} nor "
                                f"{INDEX_FILE}; add the index file that lists which tensor is in which shard")
    raise FileNotFoundError(f"{str(directory)!r} has no weights: expected {SINGLE_FILE} or {INDEX_FILE}")


def load_safetensors_dir(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict) of a Hugging Face model directory. Tensors keep the dtype they were saved in."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(directory)
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            tensors = load_file(path)
        except SafetensorError as e:
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({e}); it may be truncated: "
                             "download it again") from e
        state_dict.update(tensors)
    index = Path(directory) / INDEX_FILE
    if index.is_file():
        listed = set(read_json(index)["weight_map"])
        absent = sorted(listed - set(state_dict))
        if absent:
            raise ValueError(f"{INDEX_FILE} lists {len(absent)} tensors that no shard holds (first: {absent[0]!r}); "
                             "the checkpoint is incomplete")
    return config, state_dict

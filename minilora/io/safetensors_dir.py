"""Read a Hugging Face model directory: ``config.json`` plus weights in safetensors, one file or sharded.

A sharded checkpoint has ``model.safetensors.index.json`` whose ``weight_map`` says which shard file holds each
tensor (``{"model.embed_tokens.weight": "model-00001-of-00002.safetensors", …}``). safetensors is a flat header of
names, dtypes and byte offsets followed by raw bytes: loading it runs no code, unlike the pickles of
``pytorch_model.bin``, which minilora refuses to open.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); the file is damaged or incomplete (save or "
                         "download it again)") from e


# bytes per element of each safetensors dtype
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2,
                "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit on the JSON header


def check_safetensors(path: str | os.PathLike) -> dict:
    """Validate a safetensors file's header against the file's size before any tensor is read; returns it.

    The layout: 8 bytes (little-endian u64) giving the header's length N, N bytes of JSON mapping each tensor's
    name to its dtype, shape and [begin, end) byte range in the data that follows. Every length and range is
    checked against the file's size, so a damaged or hostile file is refused without allocating what it claims.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {str(path)!r} does not exist")
    size = path.stat().st_size

    def bad(why: str) -> ValueError:
        return ValueError(f"{str(path)!r} is not a valid safetensors file: {why}; it may be truncated or damaged "
                          "(save or download it again)")

    if size < 8:
        raise bad(f"it is {size} bytes long, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise bad(f"its header claims {n:,} bytes but the file has {size - 8:,} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(f"its header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ must map names to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise bad(f"tensor {name!r} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= data for d in shape):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise bad(f"tensor {name!r} has byte range {offsets!r} outside the {data:,} data bytes")
        count = 1
        for d in shape:
            count *= d
        if count * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"tensor {name!r}: shape {shape} of {dtype} needs {count * _DTYPE_BYTES[dtype]:,} bytes but "
                      f"its byte range holds {offsets[1] - offsets[0]:,}")
    return header


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, after `check_safetensors`; any failure is a ValueError naming the file."""
    from safetensors.torch import load_file
    check_safetensors(path)
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError and friends (overlapping ranges, …) do not name the file
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e}); it may be "
                         "truncated or damaged (save or download it again)") from e


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
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object: it is not a model config")
    if "model_type" not in config:
        raise ValueError(f"{str(path)!r} has no 'model_type', so the architecture is unknown")
    qc = config.get("quantization_config")
    if qc is not None:
        from .bnb4bit import is_bnb4bit
        if not isinstance(qc, dict):
            raise ValueError(f"{str(path)!r}: 'quantization_config' is {qc!r}; it must be an object")
        if not is_bnb4bit(config):  # other formats' packed weights would load as plain numbers: garbage
            raise ValueError(f"{str(path)!r}: quantization_config says {qc.get('quant_method')!r}"
                             f"{' 8-bit' if qc.get('load_in_8bit') else ''}; minilora reads unquantized and "
                             "bitsandbytes 4-bit (NF4) checkpoints only — load the unquantized model instead")
    return config


def read_model_config(directory: str | os.PathLike):
    """(the config.json dict, the `ModelConfig` built from it); a bad value is a ValueError naming the file."""
    from ..models.config import ModelConfig
    config = read_config(directory)
    try:
        return config, ModelConfig.from_dict(config)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{str(Path(directory) / CONFIG_FILE)!r}: {e}") from None


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files that hold the weights, checked to exist."""
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{str(index)!r} has no 'weight_map': the index file is damaged")
        if not all(isinstance(s, str) for s in weight_map.values()):
            raise ValueError(f"{str(index)!r}: every 'weight_map' value must be a shard file name")
        shards = sorted(set(weight_map.values()))
        root = os.path.abspath(directory)
        for s in shards:  # a hostile index could point at ../../secret or /etc/passwd
            # checked on the names, not on symlink targets: the Hugging Face cache links shards to ../../blobs/
            lexical = os.path.normpath(os.path.join(root, s))
            if os.path.isabs(s) or not lexical.startswith(root + os.sep):
                raise ValueError(f"{str(index)!r} names shard {s!r}, which is not a file inside {str(directory)!r}; "
                                 "shard names must be plain file names in the model directory")
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
    """(config dict, state dict) of a Hugging Face model directory. Tensors keep the dtype they were saved in;
    bitsandbytes 4-bit weights (NF4, as transformers saves them) come back dequantized to their recorded dtype."""
    config, model_config = read_model_config(directory)
    state_dict: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        tensors = read_safetensors(path)
        twice = sorted(set(tensors) & set(state_dict))
        if twice:  # which copy is right? neither may silently win
            raise ValueError(f"tensor {twice[0]!r} is in {path.name!r} and in another shard of {str(directory)!r} "
                             f"({len(twice)} tensors stored twice): the checkpoint is damaged")
        state_dict.update(tensors)
    index = Path(directory) / INDEX_FILE
    if index.is_file():
        listed = set(read_json(index)["weight_map"])
        absent = sorted(listed - set(state_dict))
        if absent:
            raise ValueError(f"{INDEX_FILE} lists {len(absent)} tensors that no shard holds (first: {absent[0]!r}); "
                             "the checkpoint is incomplete")
    from .bnb4bit import dequantize_state_dict, is_bnb4bit
    if is_bnb4bit(config):  # a bitsandbytes 4-bit save (transformers' or minilora's merged_4bit): dense weights back
        state_dict = dequantize_state_dict(state_dict, repr(str(directory)))
    # integers or booleans where weights belong would be converted to floats without a word: garbage weights
    not_float = next((k for k, v in state_dict.items() if not v.is_floating_point()), None)
    if not_float is not None:
        raise ValueError(f"{str(directory)!r}: tensor {not_float!r} is stored as {state_dict[not_float].dtype}, not as "
                         "floating point numbers, and config.json declares no 4-bit quantization: the checkpoint is "
                         "damaged or in a format minilora does not read")
    # every size config.json claims, against the tensors read (whose sizes the files' lengths bound): checked before
    # a caller builds anything from the claim
    from ..models.claimed_sizes import check_claimed_sizes
    check_claimed_sizes(model_config, {k: tuple(v.shape) for k, v in state_dict.items()},
                        repr(str(Path(directory) / CONFIG_FILE)))
    return config, state_dict

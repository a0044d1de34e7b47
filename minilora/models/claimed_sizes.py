"""A checkpoint's claimed sizes, checked against the tensors it actually holds before any model is built.

A config (``config.json`` beside safetensors, the ``{arch}.*`` keys of a GGUF) is a handful of numbers a file states
about itself; the tensors are what it holds. A model built from the claim alone trusts the file: a 3 KB file saying
``num_hidden_layers: 1000000`` makes the builder create a million layers of modules (even on the meta device each
costs Python objects and time: the build ran for hours). So every size is first read off the tensors themselves and
compared with the claim — layer count, vocabulary, widths, heads — and only then is anything built. Both readers
(`minilora.io.gguf`, `minilora.io.safetensors_dir`) and `minilora.loader.model_from_state_dict` call the one check
here, each naming its own file and keys.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import torch

from .config import ModelConfig

LAYER = re.compile(r"model\.layers\.(\d+)\.")
FIRST = "model.layers.0."
EMBED = "model.embed_tokens.weight"
OLD_BUFFER = "rotary_emb.inv_freq"  # RoPE's table, which older Hugging Face files saved: recomputed, never read


def layer_count(names) -> tuple[int, list[int]]:
    """(number of distinct layer indices, the sorted indices) among tensor names ``model.layers.<i>.…``."""
    found = sorted({int(m.group(1)) for n in names if (m := LAYER.match(n))})
    return len(found), found


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint for ``config`` holds, with its shape. Computed from ONE layer built on the
    meta device (no memory, milliseconds at any width), repeated ``num_hidden_layers`` times: call it only once the
    layer count has been checked against the file."""
    from .registry import model_class  # the registry imports the model classes; the classes do not import this

    one = dataclasses.replace(config, num_hidden_layers=1)
    with torch.device("meta"):
        model = model_class(config.model_type)(one)
    shapes, per_layer = {}, {}
    for name, t in model.state_dict().items():
        if name.startswith(FIRST):
            per_layer[name[len(FIRST):]] = tuple(t.shape)
        else:
            shapes[name] = tuple(t.shape)
    for i in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{rest}": shape for rest, shape in per_layer.items()})
    return shapes


def _rows(shapes: Mapping[str, Sequence[int]], name: str, axis: int = 0) -> int | None:
    shape = shapes.get(name)
    return int(shape[axis]) if shape is not None and len(shape) > axis else None


def check_claimed_sizes(config: ModelConfig, shapes: Mapping[str, Sequence[int]], source: str,
                        keys: Mapping[str, str] | None = None) -> None:
    """Refuse ``config`` unless it describes exactly the tensors ``shapes`` (name -> shape, Hugging Face names).

    ``source`` names the file in the error; ``keys`` maps a config field to the name the file gives it (a GGUF's
    ``llama.block_count`` for ``num_hidden_layers``). The layer count is compared first, from the names alone, so
    a claim of a million layers is refused before anything of that size exists."""
    keys = keys or {}

    def bad(field: str, claimed, evidence: str) -> ValueError:
        return ValueError(f"{source} says {keys.get(field, field)}={claimed!r}, but {evidence}: the file's sizes do "
                          "not describe its own tensors (damaged, or the config belongs to another checkpoint)")

    n, found = layer_count(shapes)
    if found != list(range(config.num_hidden_layers)):
        gaps = "" if found == list(range(n)) else ", with gaps"
        where = f" (model.layers.{found[0]} … model.layers.{found[-1]}{gaps})" if found else ""
        raise bad("num_hidden_layers", config.num_hidden_layers, f"the tensors hold {n} layers{where}")
    head_dim = config.head_dim
    implied = [  # (field, claimed, tensor, axis, what the tensor's size along axis must equal)
        ("vocab_size", config.vocab_size, EMBED, 0, config.vocab_size),
        ("hidden_size", config.hidden_size, EMBED, 1, config.hidden_size),
        ("intermediate_size", config.intermediate_size, f"{FIRST}mlp.gate_proj.weight", 0, config.intermediate_size),
        ("num_attention_heads", config.num_attention_heads, f"{FIRST}self_attn.q_proj.weight", 0,
         config.num_attention_heads * head_dim),
        ("num_key_value_heads", config.num_key_value_heads, f"{FIRST}self_attn.k_proj.weight", 0,
         config.num_key_value_heads * head_dim),
    ]
    for field, claimed, tensor, axis, want in implied:
        size = _rows(shapes, tensor, axis)
        if size is not None and size != want:
            per_head = f" × head_dim {head_dim} = {want}" if "heads" in field else ""
            raise bad(field, claimed, f"{tensor} has {size} along dimension {axis} (the claim implies {claimed}"
                                      f"{per_head})")
    expected = expected_shapes(config)
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    present = {k for k in shapes if not k.endswith(OLD_BUFFER)
               and (k != "lm_head.weight" or not config.tie_word_embeddings)}
    missing, unexpected = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or unexpected:
        msg = [f"{source} does not fit a {config.model_type} model built from its config:"]
        if missing:
            msg.append(f"{len(missing)} missing tensors (first: {missing[:3]})")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[:3]})")
        raise ValueError(" ".join(msg))
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(shapes[name])} but the config implies "
                             f"{shape}")

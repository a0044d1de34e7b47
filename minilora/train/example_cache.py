"""A cache of tokenized examples, so a resumed or repeated run does not tokenize the same data again.

The file's name and its metadata carry a key: a hash of the data's bytes (or rows), of the tokenizer (its whole
vocabulary and rules, its chat template and special tokens) and of every setting that changes the examples
(max_seq_length, text_field, masking markers, this format's version). A changed data file, another tokenizer or
another setting gives another key, so a stale cache is never read: it is simply not found. A cache file whose
metadata or arrays do not check out is ignored (and replaced), never trusted.

Format: one safetensors file (no pickles) holding every example's ids and labels end to end (int32) and the
offsets where each example starts; written through `minilora.io.atomic`, so a killed run leaves no half file.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..io.atomic import write_file
from ..io.records import DataError

CACHE_VERSION = "1"  # bump when tokenizing or masking changes what an example holds


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything about ``tokenizer`` that decides the token ids: its serialized rules and vocabulary,
    chat template and special tokens."""
    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer", None) or tokenizer
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        raise DataError(f"cannot cache examples for a {type(tokenizer).__name__}: the cache key needs the "
                        "tokenizer's full definition (a `tokenizers` backend with to_str()); pass no cache_dir")
    h = hashlib.sha256(to_str().encode("utf-8"))
    extra = {k: str(getattr(tokenizer, k, None)) for k in ("chat_template", "bos_token", "eos_token", "pad_token",
                                                           "add_bos_token")}
    h.update(json.dumps(extra, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def cache_key(data_hash: str, tokenizer, settings: dict) -> str:
    parts = {"version": CACHE_VERSION, "data": data_hash, "tokenizer": tokenizer_fingerprint(tokenizer),
             "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | os.PathLike, key: str) -> str:
    return os.path.join(os.fspath(cache_dir), f"examples-{key[:32]}.safetensors")


def read_cache(path: str, key: str) -> list[tuple[list[int], list[int]]] | None:
    """The cached (input_ids, labels) pairs, or None when there is no usable cache for ``key``."""
    if not os.path.isfile(path):
        return None
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as f:
            if (f.metadata() or {}).get("key") != key or set(f.keys()) != {"input_ids", "labels", "offsets"}:
                return None
            ids, labels, offsets = (f.get_tensor(k) for k in ("input_ids", "labels", "offsets"))
    except (SafetensorError, OSError, ValueError):
        return None
    n = len(ids)
    if not (ids.ndim == labels.ndim == offsets.ndim == 1 and len(labels) == n and len(offsets) >= 2
            and offsets[0] == 0 and offsets[-1] == n and bool(np.all(np.diff(offsets) > 0))):
        return None
    ids, labels, offsets = ids.tolist(), labels.tolist(), offsets.tolist()
    return [(ids[a:b], labels[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def write_cache(path: str, key: str, pairs: list[tuple[list[int], list[int]]]) -> str:
    """Write the (input_ids, labels) pairs under ``key``, atomically."""
    from safetensors.numpy import save_file
    lengths = [len(ids) for ids, _ in pairs]
    tensors = {
        "input_ids": np.fromiter((t for ids, _ in pairs for t in ids), dtype=np.int32, count=sum(lengths)),
        "labels": np.fromiter((t for _, labels in pairs for t in labels), dtype=np.int32, count=sum(lengths)),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }
    try:
        os.remove(path)  # an unusable cache under this key (read_cache said so): this write replaces it
    except FileNotFoundError:
        pass
    try:  # exclusive: several processes of one run (torchrun ranks) may write the same file; the first one wins
        write_file(path, lambda tmp: save_file(tensors, tmp, metadata={"key": key, "format": "minilora-examples",
                                                                       "version": CACHE_VERSION}), exclusive=True)
    except FileExistsError:
        pass  # another process published the same examples first
    return path

"""A cache of tokenized examples, so a resumed or repeated run does not tokenize the same data again.

The file's name and its metadata carry a key: a hash of the data's bytes (or rows), of the tokenizer (its whole
vocabulary and rules, its chat template and special tokens) and of every setting that changes the examples
(max_seq_length, text_field, masking markers, this format's version). A changed data file, another tokenizer or
another setting gives another key, so a stale cache is never read: it is simply not found. A cache file whose
metadata or arrays do not check out is ignored (and replaced), never trusted.

Format: one safetensors file (no pickles) holding every example's ids and labels end to end (int32), the offsets
where each example starts, and how many tokens each lost to max_seq_length; written through `minilora.io.atomic`
(exclusively: of several processes writing the same cache, the first publishes it), so no one sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..io.atomic import write_file
from ..io.records import DataError

CACHE_VERSION = "1"  # bump when tokenizing or masking changes what an example holds
ARRAYS = ("input_ids", "labels", "offsets", "truncated")


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


def read_cache(path: str, key: str) -> list[tuple[list[int], list[int], int]] | None:
    """The cached (input_ids, labels, tokens truncated) of each example, or None when there is no usable cache for
    ``key``."""
    if not os.path.isfile(path):
        return None
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as f:
            if (f.metadata() or {}).get("key") != key or set(f.keys()) != set(ARRAYS):
                return None
            ids, labels, offsets, truncated = (f.get_tensor(k) for k in ARRAYS)
    except (SafetensorError, OSError, ValueError):
        return None
    n = len(ids)
    if not (ids.ndim == labels.ndim == offsets.ndim == truncated.ndim == 1 and len(labels) == n
            and len(offsets) == len(truncated) + 1 >= 2 and offsets[0] == 0 and offsets[-1] == n
            and bool(np.all(np.diff(offsets) > 0)) and bool(np.all(truncated >= 0))):
        return None
    ids, labels, offsets, truncated = ids.tolist(), labels.tolist(), offsets.tolist(), truncated.tolist()
    return [(ids[a:b], labels[a:b], t) for a, b, t in zip(offsets[:-1], offsets[1:], truncated)]


def write_cache(path: str, key: str, examples: list[tuple[list[int], list[int], int]]) -> str:
    """Write each example's (input_ids, labels, tokens truncated) under ``key``, atomically."""
    from safetensors.numpy import save_file
    lengths = [len(e[0]) for e in examples]
    tensors = {
        "input_ids": np.fromiter((t for e in examples for t in e[0]), dtype=np.int32, count=sum(lengths)),
        "labels": np.fromiter((t for e in examples for t in e[1]), dtype=np.int32, count=sum(lengths)),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "truncated": np.array([e[2] for e in examples], dtype=np.int64),
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

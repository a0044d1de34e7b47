"""Walk a GGUF file's header with every count and length bounded by the file's size, before gguf-py reads it.

gguf-py's reader trusts the counts it reads: a file of a few dozen bytes whose metadata claims an array of 2^60
items makes it loop and allocate without end. This walker reads the same layout (little-endian, versions 2 and 3)
and refuses, with a `GGUFError` that says what is wrong, any count or length that the rest of the file cannot hold:

    magic "GGUF" | version u32 | tensor count u64 | key/value count u64
    key/value:    key (u64 length + UTF-8) | value type u32 | value
    value:        fixed-size number/bool | string (u64 length + bytes) | array (item type u32, count u64, items)
    tensor info:  name | n_dims u32 | dims u64 x n_dims | ggml type u32 | offset u64 (from the aligned data start)

Every tensor's bytes must lie inside the file. The walk is linear in the file's size, so it always ends.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
STRING, ARRAY = 8, 9
FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
U32 = 4
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, a 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset


class GGUFError(ValueError):
    """The file is not a GGUF minilora can read (corrupt, truncated, or an unsupported architecture)."""


class _Cursor:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.size, self.path = data, 0, len(data), path

    def fail(self, why: str) -> GGUFError:
        return GGUFError(f"{self.path!r} is not a readable GGUF file: {why} (at byte {self.pos:,} of {self.size:,}); "
                         "it is damaged, truncated or not made by a GGUF writer: download or reinstall it again")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise self.fail(f"{what} needs {n:,} bytes but only {self.size - self.pos:,} remain")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count of items that each take at least ``min_item_bytes``: bounded by the bytes left."""
        n = self.u64(what)
        if n * min_item_bytes > self.size - self.pos:
            raise self.fail(f"{what} is {n:,}, more than the {self.size - self.pos:,} bytes left can hold")
        return n

    def unique_string(self, seen: set, what: str) -> str:
        """A name that must not repeat (a metadata key, a tensor name); added to ``seen``."""
        name = self.string(f"a {what}")
        if name in seen:
            raise self.fail(f"{what} {name!r} appears twice")
        seen.add(name)
        return name

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


_U64 = struct.Struct("<Q")


def _skip_strings(cur: _Cursor, n: int, key: str) -> None:
    """Step over ``n`` length-prefixed strings (a tokenizer's vocabulary: ~10^5 of them), lengths bounded.
    Their UTF-8 is checked when the metadata is decoded (`minilora.io.gguf.read_metadata`)."""
    data, pos, size, unpack = cur.data, cur.pos, cur.size, _U64.unpack_from
    for i in range(n):
        if size - pos < 8:
            cur.pos = pos
            raise cur.fail(f"item {i} of {key!r} is cut off")
        length = unpack(data, pos)[0]
        pos += 8
        if length > size - pos:
            cur.pos = pos
            raise cur.fail(f"item {i} of {key!r} claims {length:,} bytes but only {size - pos:,} remain")
        pos += length
    cur.pos = pos


def _value(cur: _Cursor, vtype: int, key: str, in_array: bool = False):
    if vtype in FIXED_SIZES:
        raw = cur.take(FIXED_SIZES[vtype], f"the value of {key!r}")
        return struct.unpack("<I", raw)[0] if vtype == 4 else None
    if vtype == STRING:
        cur.string(f"the value of {key!r}")
        return None
    if vtype == ARRAY and not in_array:
        itype = cur.u32(f"the item type of {key!r}")
        if itype in FIXED_SIZES:
            n = cur.count(f"the item count of {key!r}", FIXED_SIZES[itype])
            cur.take(n * FIXED_SIZES[itype], f"the items of {key!r}")
        elif itype == STRING:
            _skip_strings(cur, cur.count(f"the item count of {key!r}", 8), key)
        else:
            raise cur.fail(f"array {key!r} has item type {itype}, which GGUF does not define"
                           + (" (nested arrays are not read)" if itype == ARRAY else ""))
        return None
    raise cur.fail(f"key {key!r} has value type {vtype}, which GGUF does not define")


def check_gguf(path: str | os.PathLike) -> dict:
    """Validate the header of the GGUF file ``path``; returns {version, tensors, keys, alignment, data_start}."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4 + 4 + 8 + 8:
            raise GGUFError(f"{str(path)!r} is {size} bytes long: too short for a GGUF header; it is truncated or "
                            "not a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # pages are read only as the walk needs
            return _walk(_Cursor(data, str(path)))


def _walk(cur: _Cursor) -> dict:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = cur.path
    magic = cur.take(4, "the magic number")
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"version {version} is not one of {SUPPORTED_VERSIONS} (a big-endian or very old file?)")
    n_tensors = cur.count("the tensor count", MIN_TENSOR_INFO_BYTES)
    n_keys = cur.count("the key/value count", MIN_KV_BYTES)
    alignment, keys = 32, set()
    for _ in range(n_keys):
        key = cur.unique_string(keys, "metadata key")
        vtype = cur.u32(f"the value type of {key!r}")
        value = _value(cur, vtype, key)
        if key == "general.alignment":
            if vtype != 4 or not value or value & (value - 1) or value > 1 << 20:
                raise cur.fail("general.alignment must be a u32 power of two up to 1 MiB")
            alignment = value
    infos, names = [], set()
    for _ in range(n_tensors):
        name = cur.unique_string(names, "tensor name")
        n_dims = cur.u32(f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})")
        dims = [cur.u64(f"a dimension of tensor {name!r}") for _ in range(n_dims)]
        raw_type = cur.u32(f"the type of tensor {name!r}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has type {raw_type}, which the gguf package does not know") from None
        offset = cur.u64(f"the data offset of tensor {name!r}")
        if dims[0] % block:
            raise cur.fail(f"tensor {name!r}: its first dimension {dims[0]} is not a multiple of its type's block "
                           f"of {block} values")
        n = 1
        for d in dims:
            n *= d
        infos.append((name, offset, n // block * type_size))
    data_start = -(-cur.pos // alignment) * alignment
    for name, offset, nbytes in infos:
        if data_start + offset + nbytes > cur.size:
            raise cur.fail(f"tensor {name!r} claims {nbytes:,} bytes at offset {offset:,} of the data, past the end "
                           "of the file")
    return {"version": version, "tensors": n_tensors, "keys": n_keys, "alignment": alignment,
            "data_start": data_start}

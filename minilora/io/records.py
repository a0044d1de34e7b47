"""The base of minilora's data readers: `DataError`, the limits every reader keeps, and the JSON / JSON Lines
readers (`minilora.io.records_arrow` reads Parquet, CSV and Arrow; `minilora.io.data_sources` picks the reader
for a path or an object and describes the whole).

A reader yields lists of ``(where, record)`` pairs, `BATCH_ROWS` at a time; ``where`` names the file and the line
or row, for error messages. Rows count from 0, as pandas and `datasets` number them; JSON Lines lines count from 1,
as an editor shows them. JSON Lines are split on "\\n" only: JSON allows U+2028 and U+0085 inside a string, and they
do not end a line. Text that is not UTF-8, NaN or Infinity (not JSON), a JSON Lines line longer than
`MAX_LINE_BYTES` and a ``.json`` larger than `MAX_JSON_BYTES` (parsed whole: JSON has no way to read half a list)
are each a `DataError` naming the file and the line or byte.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

MAX_LINE_BYTES = 64 << 20  # a record of 64 MiB is ~16 M tokens, 40x the longest context anyone trains on
MAX_JSON_BYTES = 512 << 20  # parsed whole into Python objects (~10x its size in memory): larger belongs in .jsonl
BATCH_ROWS = 1024

Batch = list[tuple[str, dict]]


class DataError(ValueError):
    """A dataset or template problem, with what was wrong and how to fix it."""


@dataclass
class Records:
    """A source of records (see `minilora.io.data_sources`): ``batches()`` yields lists of (where, record);
    ``count`` is the number of records when the format tells it up front (else None); ``fingerprint()`` hashes the
    data itself; ``stamp()`` (sizes and modification times of the files) tells whether a file changed meanwhile."""
    name: str
    count: int | None
    batches: Callable[[], Iterator[Batch]]
    fingerprint: Callable[[], str]
    stamp: Callable[[], tuple] = tuple


def one_line(e: Exception) -> str:
    """A library's message on one line (pyarrow's span several)."""
    return " ".join(str(e).split())


# --- JSON and JSON Lines --------------------------------------------------------------------------------------------
def _no_constants(name):
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity); write null or a number")


def _parse_json(text: str, where: str, invalid: Callable):
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise DataError(invalid(e)) from None
    except ValueError as e:  # NaN / Infinity
        raise DataError(f"{where}: {e}") from None


def decode(raw: bytes, where: str, offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}, byte {offset + e.start}: not UTF-8 text (0x{raw[e.start]:02x}); save the file "
                        "as UTF-8") from None


def json_batches(path: str) -> Iterator[Batch]:
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path} holds {size:,} bytes; a .json file is parsed whole, so it may hold at most "
                        f"{MAX_JSON_BYTES:,}: save it as .jsonl (one record per line) or Parquet, which are "
                        "read in batches")
    with open(path, "rb") as f:
        text = decode(f.read(), path).removeprefix("\ufeff")  # JSON readers may skip a byte-order mark
    data = _parse_json(text, path, lambda e: f"{path} is not valid JSON ({e}); expected a list of objects (.json) "
                       "or one object per line (.jsonl)")
    if isinstance(data, dict) and "train" in data:
        data = data["train"]
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of JSON objects (records), got a {type(data).__name__}")
    for start in range(0, len(data), BATCH_ROWS):
        batch = []
        for i in range(start, min(start + BATCH_ROWS, len(data))):
            if not isinstance(data[i], dict):
                raise DataError(f"{path} must hold a list of JSON objects (records); record {i} is a "
                                f"{type(data[i]).__name__}")
            batch.append((f"{path}, record {i}", data[i]))
        yield batch


def grouped(pairs) -> Iterator[Batch]:
    """(where, record) pairs in lists of BATCH_ROWS."""
    batch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def jsonl_batches(path: str) -> Iterator[Batch]:
    return grouped(_jsonl_pairs(path))


def _jsonl_pairs(path: str):
    number, offset = 0, 0
    with open(path, "rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 1):  # bytes: split on b"\n" only, never on U+2028 or U+0085
            number += 1
            where = f"{path}, line {number}"
            if len(line) > MAX_LINE_BYTES:
                raise DataError(f"{where} is longer than {MAX_LINE_BYTES >> 20} MiB; a record that long is not "
                                "training data (or the file is not JSON Lines)")
            text = decode(line, where, offset)
            offset += len(line)
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip(" \t\r\n"):  # JSON's own whitespace
                continue
            record = _parse_json(text, where, lambda e: f"{where}: not valid JSON ({e.msg} at column {e.colno}); a "
                                 ".jsonl file holds one JSON object per line")
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object ({{...}}), got {type(record).__name__}")
            yield where, record


def read_text_file(path: str | os.PathLike) -> str:
    """A raw text file as one string; text that is not UTF-8 is an error naming the file and the byte."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"text file {path!r} does not exist; pass a plain UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    return decode(raw, path).removeprefix("\ufeff")

"""Training records from where learners keep them: JSON / JSON Lines, Parquet (one file or a folder of shards),
CSV / TSV, a folder written by `datasets.Dataset.save_to_disk`, a `datasets.Dataset` in memory, or any iterable
of dicts.

`open_records(source)` gives a `Records`:

- ``batches()`` yields lists of ``(where, record)`` pairs, `BATCH_ROWS` at a time, so a large file is never loaded
  whole (a ``.json`` file is the exception: JSON has no way to read half a list); ``where`` names the file and the
  line or row, for error messages;
- ``count`` is the number of records when the format says so up front (None for JSON Lines or a generator);
- ``fingerprint()`` hashes the data itself (the files' bytes, or the rows of an object in memory): the key of the
  tokenized-example cache, so a changed file can never be read from a stale cache;
- ``stamp()`` (size and modification time of every file) lets a reader notice a file that changed while it was read.

Every file is hostile. A JSON Lines line or a CSV row longer than `MAX_LINE_BYTES`, a ``.json`` larger than
`MAX_JSON_BYTES`, a Parquet footer or row group claiming bytes or rows that the file does not hold (read through a
memory map, so a claimed size is never allocated), text that is not
UTF-8, NaN or Infinity (not JSON) — each is a `DataError` naming the file and the line, row or byte.
Arrow data is checked in full (`validate(full=True)`) before a value is read from it.

Rows count from 0, as pandas and `datasets` number them; JSON Lines lines count from 1, as an editor shows them.
JSON Lines are split on "\\n" only: JSON allows U+2028 and U+0085 inside a string, and they do not end a line.
Parquet, CSV and Arrow are read by pyarrow (the ``data`` extra: ``pip install 'minilora[data]'``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator

MAX_LINE_BYTES = 64 << 20  # a record of 64 MiB is ~16 M tokens, 40x the longest context anyone trains on
MAX_JSON_BYTES = 512 << 20  # parsed whole into Python objects (~10x its size in memory): larger belongs in .jsonl
BATCH_ROWS = 1024
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv")
INSTALL_HINT = "pip install 'minilora[data]' (or pip install pyarrow)"

Batch = list[tuple[str, dict]]


class DataError(ValueError):
    """A dataset or template problem, with what was wrong and how to fix it."""


@dataclass
class Records:
    name: str
    count: int | None
    batches: Callable[[], Iterator[Batch]]
    fingerprint: Callable[[], str]
    stamp: Callable[[], tuple] = tuple


# --- opening a source ---------------------------------------------------------------------------------------------
def open_records(source) -> Records:
    """A path (file or folder), a `datasets.Dataset`, or an iterable of dicts, as `Records`."""
    if isinstance(source, (str, os.PathLike)):
        return _open_path(os.fspath(source))
    kind = type(source).__module__.split(".")[0]
    if kind == "datasets" and isinstance(source, dict):
        raise DataError(f"got a DatasetDict with splits {sorted(source.keys())}: pass one split, e.g. "
                        "dataset['train']")
    if kind == "datasets" and hasattr(source, "with_format") and hasattr(source, "__len__"):
        return _dataset_records(source)
    if isinstance(source, (dict, bytes)) or not hasattr(source, "__iter__"):
        raise DataError(f"cannot read records from a {type(source).__name__}: pass a file or folder path, a "
                        "datasets.Dataset, or a list (any iterable) of dicts")
    return _iterable_records(source)


def _open_path(path: str) -> Records:
    if not os.path.exists(path):
        raise DataError(f"dataset file {path!r} does not exist; pass a {'/'.join(FILE_SUFFIXES)} file, a folder "
                        "of Parquet shards or a save_to_disk folder, or 'dates' for the bundled task")
    if os.path.isdir(path):
        return _open_folder(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unknown data file type {suffix or '(no suffix)'!r}; minilora reads "
                        f"{', '.join(FILE_SUFFIXES)} files, folders of them, and save_to_disk folders")
    return _files_records(path, [path], suffix)


def _open_folder(path: str) -> Records:
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):  # DatasetDict.save_to_disk: one folder per split
        splits = sorted(e for e in os.listdir(path) if os.path.isfile(os.path.join(path, e, "state.json")))
        if "train" not in splits:
            raise DataError(f"{path} is a saved DatasetDict without a 'train' split (splits: {splits}); pass the "
                            "folder of the split to train on")
        path = os.path.join(path, "train")
    if os.path.isfile(os.path.join(path, "state.json")):
        return _files_records(path, _saved_dataset_files(path), ".arrow")
    shards = sorted(e for e in os.listdir(path) if os.path.isfile(os.path.join(path, e)) and
                    os.path.splitext(e)[1].lower() in FILE_SUFFIXES)
    kinds = sorted({os.path.splitext(e)[1].lower() for e in shards})
    if not shards:
        raise DataError(f"{path} holds no data files ({', '.join(FILE_SUFFIXES)}) and is not a save_to_disk folder; "
                        "shards in sub-folders are not searched: pass the sub-folder")
    if len(kinds) > 1:
        raise DataError(f"{path} mixes data files of several types {kinds}: pass a folder of one type, or one file")
    return _files_records(path, [_inside(path, e) for e in shards], kinds[0])


def _inside(folder: str, name: str) -> str:
    """``folder/name``, refused if ``name`` (or a link) leads outside the folder."""
    full = os.path.join(folder, name)
    real, top = os.path.realpath(full), os.path.realpath(folder)
    if os.path.basename(name) != name or not real.startswith(top + os.sep):
        raise DataError(f"{folder}: {name!r} points outside the dataset folder; refusing to read it")
    return full


def _saved_dataset_files(path: str) -> list[str]:
    state_path = os.path.join(path, "state.json")
    if os.path.getsize(state_path) > 1 << 20:
        raise DataError(f"{state_path} is larger than 1 MiB: not a save_to_disk state file")
    try:
        with open(state_path, encoding="utf-8") as f:
            names = [entry["filename"] for entry in json.load(f)["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state_path} is not a datasets save_to_disk state file ({type(e).__name__}: {e})") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{state_path} names no data files")
    files = [_inside(path, n) for n in names]
    for f in files:
        if not os.path.isfile(f):
            raise DataError(f"{state_path} names {os.path.basename(f)!r}, which is missing from {path}")
    return files


def _files_records(name: str, files: list[str], suffix: str) -> Records:
    reader = {".json": _json_batches, ".jsonl": _jsonl_batches, ".parquet": _parquet_batches,
              ".csv": _csv_batches, ".tsv": _csv_batches, ".arrow": _arrow_batches}[suffix]

    def batches():
        for f in files:
            yield from reader(f)

    def stamp():
        return tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)

    return Records(name, _count_files(files, suffix), batches, lambda: _hash_files(name, files), stamp)


def _hash_files(root: str, files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(os.path.relpath(f, root if os.path.isdir(root) else os.path.dirname(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _count_files(files: list[str], suffix: str) -> int | None:
    if suffix == ".parquet":
        return sum(_parquet_file(f).metadata.num_rows for f in files)
    if suffix == ".arrow":
        return sum(_arrow_rows(f) for f in files)
    return None


def _one_line(e: Exception) -> str:
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


def _decode(raw: bytes, where: str, offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}, byte {offset + e.start}: not UTF-8 text (0x{raw[e.start]:02x}); save the file "
                        "as UTF-8") from None


def _json_batches(path: str) -> Iterator[Batch]:
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise DataError(f"{path} holds {size:,} bytes; a .json file is parsed whole, so it may hold at most "
                        f"{MAX_JSON_BYTES:,}: save it as .jsonl (one record per line) or Parquet, which are "
                        "read in batches")
    with open(path, "rb") as f:
        text = _decode(f.read(), path).removeprefix("\ufeff")  # JSON readers may skip a byte-order mark
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


def _grouped(pairs) -> Iterator[Batch]:
    """(where, record) pairs in lists of BATCH_ROWS."""
    batch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _jsonl_batches(path: str) -> Iterator[Batch]:
    return _grouped(_jsonl_pairs(path))


def _jsonl_pairs(path: str):
    number, offset = 0, 0
    with open(path, "rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 1):  # bytes: split on b"\n" only, never on U+2028 or U+0085
            number += 1
            where = f"{path}, line {number}"
            if len(line) > MAX_LINE_BYTES:
                raise DataError(f"{where} is longer than {MAX_LINE_BYTES >> 20} MiB; a record that long is not "
                                "training data (or the file is not JSON Lines)")
            text = _decode(line, where, offset)
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


# --- Arrow tables: Parquet, CSV, save_to_disk ---------------------------------------------------------------------
def _pyarrow():
    try:
        import pyarrow
    except ImportError:
        raise DataError(f"reading Parquet, CSV and save_to_disk folders needs pyarrow: {INSTALL_HINT}") from None
    return pyarrow


def _damage_errors(pa) -> tuple:
    """What pyarrow raises on a damaged file: its own errors, OSError, and ValueError (UnicodeDecodeError included,
    e.g. from a column name or a string that is not UTF-8). A DataError is a ValueError too: catch it first."""
    return pa.ArrowException, OSError, ValueError


def _rows(table_batch, name: str, first_row: int) -> Batch:
    pa = _pyarrow()
    try:
        table_batch.validate(full=True)  # offsets and lengths inside their buffers before any value is read
        rows = table_batch.to_pylist()
    except _damage_errors(pa) as e:
        raise DataError(f"{name}, rows {first_row}..{first_row + table_batch.num_rows - 1}: damaged data "
                        f"({_one_line(e)})") from None
    return [(f"{name}, row {first_row + i}", r) for i, r in enumerate(rows)]


def _parquet_file(path: str):
    pa = _pyarrow()
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path, memory_map=True)
        _check_parquet_claims(path, pf.metadata)
    except DataError:
        raise
    except _damage_errors(pa) as e:
        raise DataError(f"{path} is not a readable Parquet file ({_one_line(e)})") from None
    return pf


def _check_parquet_claims(path: str, meta) -> None:
    """The row counts the footer claims must agree before anything is read (what each row group really holds is
    checked as it is read). Byte ranges are left to pyarrow, on a memory map: a column chunk that claims more bytes
    than the file holds fails to read instead of allocating them. (Its per-column metadata is not opened here:
    pyarrow 26 aborts the process on some damaged column metadata when it is opened from Python, while reading the
    same file raises a clean error.)"""
    rows = 0
    for g in range(meta.num_row_groups):
        claimed = meta.row_group(g).num_rows
        if claimed < 0:
            raise DataError(f"{path}: row group {g} claims {claimed} rows (a damaged or hostile file)")
        rows += claimed
    if rows != meta.num_rows:
        raise DataError(f"{path}: the footer claims {meta.num_rows} rows but its row groups claim {rows} (a damaged "
                        "or hostile file)")


def _parquet_batches(path: str) -> Iterator[Batch]:
    pa = _pyarrow()
    pf = _parquet_file(path)
    row = 0
    for g in range(pf.metadata.num_row_groups):
        claimed, start = pf.metadata.row_group(g).num_rows, row
        try:
            for b in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]):
                yield _rows(b, path, row)
                row += b.num_rows
        except DataError:
            raise
        except _damage_errors(pa) as e:
            raise DataError(f"{path}, row group {g}: damaged data ({_one_line(e)})") from None
        if row - start != claimed:
            raise DataError(f"{path}: row group {g} claims {claimed} rows but holds {row - start} (a damaged or "
                            "hostile file)")


def _arrow_reader(path: str):
    """(record batch reader, open memory map) of an Arrow IPC file as save_to_disk writes it (stream format).
    Memory-mapped, so a message claiming more bytes than the file holds fails instead of allocating them."""
    pa = _pyarrow()
    source = pa.memory_map(path)
    try:
        magic = source.read(6)
        source.seek(0)
        if magic == b"ARROW1":
            f = pa.ipc.open_file(source)
            return (f.get_batch(i) for i in range(f.num_record_batches)), source
        return pa.ipc.open_stream(source), source
    except _damage_errors(pa) as e:
        source.close()
        raise DataError(f"{path} is not a readable Arrow file ({_one_line(e)})") from None


def _arrow_rows(path: str) -> int:
    pa = _pyarrow()
    reader, source = _arrow_reader(path)
    try:
        return sum(b.num_rows for b in reader)  # memory-mapped: no data is copied to count
    except _damage_errors(pa) as e:
        raise DataError(f"{path} is not a readable Arrow file ({_one_line(e)})") from None
    finally:
        source.close()


def _arrow_batches(path: str) -> Iterator[Batch]:
    pa = _pyarrow()
    reader, source = _arrow_reader(path)
    row = 0
    try:
        for b in reader:
            for start in range(0, b.num_rows, BATCH_ROWS):
                part = b.slice(start, BATCH_ROWS)
                yield _rows(part, path, row)
                row += part.num_rows
    except DataError:
        raise
    except _damage_errors(pa) as e:
        raise DataError(f"{path}, after row {row}: damaged data ({_one_line(e)})") from None
    finally:
        source.close()


def _csv_batches(path: str) -> Iterator[Batch]:
    """CSV / TSV: the first row names the columns, and every cell is text (no guessing of numbers or dates, which
    would turn an answer such as "2021-03-05" into a date). Cells are read as bytes and decoded here, so a cell that
    is not UTF-8 is named by row and column."""
    pa = _pyarrow()
    import pyarrow.csv as pcsv
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    read = pcsv.ReadOptions(block_size=MAX_LINE_BYTES)  # a row must fit in one block: rows are bounded by it
    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    row = 0

    def fail(e):
        if "straddl" in str(e):
            return DataError(f"{path}, row {row} or after: a row longer than {MAX_LINE_BYTES >> 20} MiB (or a quote "
                             "that is never closed); a record that long is not training data")
        return DataError(f"{path}, row {row} or after: not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                         f"({_one_line(e)})")

    try:
        names = pcsv.open_csv(path, read_options=read, parse_options=parse,
                              convert_options=pcsv.ConvertOptions(check_utf8=False)).schema.names
        if len(set(names)) != len(names):
            raise DataError(f"{path}: the header names a column twice ({names}); column names must be unique")
        convert = pcsv.ConvertOptions(column_types={n: pa.binary() for n in names}, check_utf8=False)
        for b in pcsv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
            columns = b.to_pydict()
            batch = []
            for i in range(b.num_rows):
                where = f"{path}, row {row + i}"
                batch.append((where, {n: _decode(columns[n][i], f"{where}, column {n!r}")
                                      if columns[n][i] is not None else None for n in names}))
            row += b.num_rows
            if batch:
                yield batch
    except pa.ArrowException as e:
        raise fail(e) from None
    except UnicodeDecodeError:  # a header that is not UTF-8
        raise DataError(f"{path}: the header row is not UTF-8 text; save the file as UTF-8") from None


# --- objects in memory --------------------------------------------------------------------------------------------
def _dataset_records(ds) -> Records:
    """A `datasets.Dataset`, read as Arrow tables in the order its indices give (after select/shuffle too)."""
    pa = _pyarrow()
    name = "the Dataset"

    def tables():
        return ds.with_format("arrow").iter(batch_size=BATCH_ROWS)

    def batches():
        row = 0
        for t in tables():
            yield _rows(t, name, row)
            row += t.num_rows

    def fingerprint():
        h = hashlib.sha256()
        for t in tables():
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, t.schema) as w:
                w.write_table(t)
            h.update(sink.getvalue())
        return h.hexdigest()

    return Records(name, len(ds), batches, fingerprint)


def _canonical(obj):
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, tensors: their values, never a shortened repr
        return obj.tolist()
    raise TypeError(f"a record holds a {type(obj).__name__}, which cannot be hashed for the cache")


def _iterable_records(source) -> Records:
    one_shot = iter(source) is source
    count = len(source) if hasattr(source, "__len__") else None
    used = []

    def batches():
        if one_shot and used:
            raise DataError("this iterator of records was already read; pass a list to read the records again")
        used.append(True)
        return _grouped(pairs())

    def pairs():
        for i, record in enumerate(source):
            if not isinstance(record, dict):
                raise DataError(f"record {i}: expected a dict (one record), got a {type(record).__name__}")
            yield f"record {i}", record

    def fingerprint():
        if one_shot:
            raise DataError("a one-shot iterator of records cannot be hashed without being used up, so it cannot be "
                            "cached: pass a list (or a datasets.Dataset), or no cache_dir")
        h = hashlib.sha256()
        for record in source:
            try:
                h.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=_canonical).encode(
                    "utf-8", "surrogatepass") + b"\n")
            except (TypeError, ValueError) as e:
                raise DataError(f"cannot hash the records for the cache ({e}); pass no cache_dir") from None
        return h.hexdigest()

    return Records("the records", count, batches, fingerprint)


def read_text_file(path: str | os.PathLike) -> str:
    """A raw text file as one string; text that is not UTF-8 is an error naming the file and the byte."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"text file {path!r} does not exist; pass a plain UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    return _decode(raw, path).removeprefix("\ufeff")

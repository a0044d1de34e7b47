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

Every file is hostile: the readers (`minilora.io.records` for JSON, `minilora.io.records_arrow` for the rest) bound
lines, rows and claimed sizes by the file, and refuse text that is not UTF-8, each with one `DataError` line naming
the file and the line, row or byte. Shards and the files a save_to_disk folder names must stay inside the folder.
"""
from __future__ import annotations

import hashlib
import json
import os

from . import records_arrow
from .records import DataError, Records, grouped, json_batches, jsonl_batches

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv")


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
        return records_arrow.dataset_records(source)
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
    reader = {".json": json_batches, ".jsonl": jsonl_batches, ".parquet": records_arrow.parquet_batches,
              ".csv": records_arrow.csv_batches, ".tsv": records_arrow.csv_batches,
              ".arrow": records_arrow.arrow_batches}[suffix]

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
        return sum(records_arrow.parquet_file(f).metadata.num_rows for f in files)
    if suffix == ".arrow":
        return sum(records_arrow.arrow_rows(f) for f in files)
    return None


# --- objects in memory --------------------------------------------------------------------------------------------
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
        return grouped(pairs())

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

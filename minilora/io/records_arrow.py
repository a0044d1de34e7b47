"""Parquet (a file, or each shard of a folder), CSV / TSV and Arrow IPC files (what `datasets.Dataset.save_to_disk`
writes), and a `datasets.Dataset` in memory, read as Arrow tables by pyarrow (the ``data`` extra:
``pip install 'minilora[data]'``), `BATCH_ROWS` rows at a time.

Every file is hostile: Parquet and Arrow files are memory-mapped, so a footer or message that claims more bytes than
the file holds fails to read instead of allocating them; the row counts a Parquet footer claims must agree, and each
row group must hold what it claims; Arrow data is checked in full (`validate(full=True)`) before a value is read
from it; a CSV row longer than `MAX_LINE_BYTES` (pyarrow's block size) is refused; a CSV cell that is not UTF-8 is
named by row and column. Anything pyarrow raises on a damaged file becomes one `DataError` line naming the file.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Iterator

from . import records as limits
from .records import BATCH_ROWS, Batch, DataError, Records, decode, one_line

INSTALL_HINT = "pip install 'minilora[data]' (or pip install pyarrow)"


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


@contextmanager
def _damage_named(what: Callable[[], str]):
    """Whatever pyarrow raises inside becomes one DataError line: ``what()`` (evaluated then) and pyarrow's reason."""
    try:
        yield
    except DataError:
        raise
    except _damage_errors(_pyarrow()) as e:
        raise DataError(f"{what()} ({one_line(e)})") from None


def _rows(table_batch, name: str, first_row: int) -> Batch:
    with _damage_named(lambda: f"{name}, rows {first_row}..{first_row + table_batch.num_rows - 1}: damaged data"):
        table_batch.validate(full=True)  # offsets and lengths inside their buffers before any value is read
        rows = table_batch.to_pylist()
    return [(f"{name}, row {first_row + i}", r) for i, r in enumerate(rows)]


def parquet_file(path: str):
    _pyarrow()
    import pyarrow.parquet as pq
    with _damage_named(lambda: f"{path} is not a readable Parquet file"):
        pf = pq.ParquetFile(path, memory_map=True)
        _check_parquet_claims(path, pf.metadata)
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


def parquet_batches(path: str) -> Iterator[Batch]:
    pf = parquet_file(path)
    row = 0
    for g in range(pf.metadata.num_row_groups):
        claimed, start = pf.metadata.row_group(g).num_rows, row
        with _damage_named(lambda: f"{path}, row group {g}: damaged data"):
            for b in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]):
                yield _rows(b, path, row)
                row += b.num_rows
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
        raise DataError(f"{path} is not a readable Arrow file ({one_line(e)})") from None


def arrow_rows(path: str) -> int:
    reader, source = _arrow_reader(path)
    with source, _damage_named(lambda: f"{path} is not a readable Arrow file"):
        return sum(b.num_rows for b in reader)  # memory-mapped: no data is copied to count


def arrow_batches(path: str) -> Iterator[Batch]:
    reader, source = _arrow_reader(path)
    row = 0
    with source, _damage_named(lambda: f"{path}, after row {row}: damaged data"):
        for b in reader:
            for start in range(0, b.num_rows, BATCH_ROWS):
                part = b.slice(start, BATCH_ROWS)
                yield _rows(part, path, row)
                row += part.num_rows


def csv_batches(path: str) -> Iterator[Batch]:
    """CSV / TSV: the first row names the columns, and every cell is text (no guessing of numbers or dates, which
    would turn an answer such as "2021-03-05" into a date). Cells are read as bytes and decoded here, so a cell that
    is not UTF-8 is named by row and column."""
    pa = _pyarrow()
    import pyarrow.csv as pcsv
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    read = pcsv.ReadOptions(block_size=limits.MAX_LINE_BYTES)  # a row must fit in one block: rows are bounded by it
    parse = pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    row = 0

    def fail(e):
        if "straddl" in str(e):
            return DataError(f"{path}, row {row} or after: a row longer than {limits.MAX_LINE_BYTES >> 20} MiB (or a "
                             "quote that is never closed); a record that long is not training data")
        return DataError(f"{path}, row {row} or after: not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                         f"({one_line(e)})")

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
                batch.append((where, {n: decode(columns[n][i], f"{where}, column {n!r}")
                                      if columns[n][i] is not None else None for n in names}))
            row += b.num_rows
            if batch:
                yield batch
    except pa.ArrowException as e:
        raise fail(e) from None
    except UnicodeDecodeError:  # a header that is not UTF-8
        raise DataError(f"{path}: the header row is not UTF-8 text; save the file as UTF-8") from None


def dataset_records(ds) -> Records:
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

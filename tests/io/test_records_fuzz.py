"""Property-based fuzz of the data readers: real Parquet, save_to_disk (Arrow), CSV and JSON Lines files, truncated
anywhere or with random bytes overwritten, must be read or refused with a DataError within 2 s — never a hang, a
crash or another exception. Deterministic (derandomized)."""
from __future__ import annotations

import json

import pytest
from helpers.fuzz import FUZZ, Hang, time_limit  # noqa: F401  (Hang: what time_limit raises)
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.train import DataError, read_records

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

RECORDS = [{"instruction": f"rewrite {i}", "input": "March 5, 2021" if i % 2 else "", "output": f"2021-03-0{i}",
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": str(i)}]}
           for i in range(1, 9)]


def _valid_file(kind: str, folder) -> tuple[str, str]:
    """(path to pass, path of the file to damage)."""
    table = pa.Table.from_pylist(RECORDS)
    if kind == "parquet":
        path = folder / "d.parquet"
        pq.write_table(table, path, row_group_size=3)
        return str(path), str(path)
    if kind == "csv":
        path = folder / "d.csv"
        pcsv.write_csv(table.drop_columns(["messages"]), path)
        return str(path), str(path)
    if kind == "jsonl":
        path = folder / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
        return str(path), str(path)
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(folder / "saved"))
    state = json.loads((folder / "saved" / "state.json").read_text())
    return str(folder / "saved"), str(folder / "saved" / state["_data_files"][0]["filename"])


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk", "csv", "jsonl"])
def test_damaged_data_files_are_read_or_refused_cleanly(tmp_path_factory, kind):
    source, target = _valid_file(kind, tmp_path_factory.mktemp(kind))
    with open(target, "rb") as f:
        original = f.read()

    @settings(FUZZ, max_examples=500)
    @given(cut=st.one_of(st.none(), st.integers(0, len(original))),
           edits=st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=6))
    def check(cut, edits):
        raw = bytearray(original if cut is None else original[:cut])
        for at, value in edits:
            if at < len(raw):
                raw[at] = value
        with open(target, "wb") as f:
            f.write(raw)
        with time_limit(2):
            try:
                read_records(source)
            except DataError:
                pass

    check()


def test_a_column_name_or_value_that_is_not_utf8_is_refused(tmp_path):
    """Found by the fuzz above (at more examples than CI runs): pyarrow raised UnicodeDecodeError from the footer's
    column names and from Arrow string values that validate() had passed."""
    source, target = _valid_file("parquet", tmp_path)
    raw = open(target, "rb").read()
    open(target, "wb").write(raw.replace(b"instruction", b"\x80nstruction"))  # every column name in the footer
    with pytest.raises(DataError, match="d.parquet is not a readable Parquet file"):
        read_records(source)
    source, target = _valid_file("save_to_disk", tmp_path / "saved")
    raw = open(target, "rb").read()
    open(target, "wb").write(raw.replace(b"rewrite 3", b"\x80ewrite 3"))
    with pytest.raises(DataError, match=r"rows 0\.\.7: damaged data"):
        read_records(source)


def test_damaged_column_metadata_does_not_abort_the_process(tmp_path):
    """Found by the fuzz: one byte of a column's level histogram, changed, made pyarrow 26 abort the whole process
    (an uncaught C++ exception) when the column's metadata was opened from Python. Reading in a child process shows
    an abort as a signal instead of killing the test run. The byte's place depends on pyarrow's writer."""
    import subprocess
    import sys
    source, target = _valid_file("parquet", tmp_path)
    raw = bytearray(open(target, "rb").read())
    if len(raw) != 3699 or pa.__version__.split(".")[0] != "26":
        pytest.skip(f"the damaged byte was located in pyarrow 26's file of 3699 bytes (this is {len(raw)})")
    raw[1468] = 50
    open(target, "wb").write(raw)
    code = ("import sys\nfrom minilora.train import DataError, read_records\n"
            "try:\n    read_records(sys.argv[1])\nexcept DataError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code, source], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert "damaged data" in done.stdout or "not a readable Parquet file" in done.stdout

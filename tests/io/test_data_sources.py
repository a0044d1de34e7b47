"""Bring your own data: the same records as JSON Lines, JSON, Parquet (a file and a folder of shards), CSV, TSV, a
save_to_disk folder and a `datasets.Dataset` give the same tokens and labels; every column layout; every error names
the file and the row; the tokenized-example cache hits, misses on any change and is never read stale; hostile files
end in one clear line, quickly, with nothing written."""
import json
import os
import re

import pytest
from helpers.train import tiny_tokenizer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from minilora.io import records as records_module  # noqa: E402
from minilora.train import IGNORE_INDEX, DataError, load_examples  # noqa: E402
from minilora.train import data as data_module  # noqa: E402

ALPACA = [
    {"instruction": "Rewrite the date in ISO form", "input": "March 5, 2021", "output": "2021-03-05"},
    {"instruction": "What day was I born?", "input": "", "output": "5 March 2021"},
    {"instruction": "Rewrite, with a comma, the date", "input": "Mar 5 2021", "output": "2021-03-05"},
    {"instruction": "a \"quoted\" word and a tab\there", "input": "two\nlines", "output": "2021-12-31"},
]
CHATS = [
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "day?"},
                  {"role": "assistant", "content": "5"}]},
    {"messages": [{"role": "user", "content": "year?"}, {"role": "assistant", "content": "2021"}]},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def as_tuples(examples):
    return [(e.input_ids, e.labels) for e in examples]


def write(kind: str, records: list[dict], folder) -> str:
    """``records`` written as a learner could have them; returns the path to pass."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(records)
    if kind == "jsonl":
        path = folder / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == "json":
        path = folder / "d.json"
        path.write_text(json.dumps(records), encoding="utf-8")
    elif kind == "parquet":
        path = folder / "d.parquet"
        pq.write_table(table, path, row_group_size=3)  # several row groups
    elif kind == "parquet-shards":
        path = folder / "shards"
        path.mkdir()
        half = len(records) // 2
        pq.write_table(table.slice(0, half), path / "train-00000-of-00002.parquet")
        pq.write_table(table.slice(half), path / "train-00001-of-00002.parquet")
    elif kind in ("csv", "tsv"):
        path = folder / f"d.{kind}"
        pcsv.write_csv(table, path, pcsv.WriteOptions(delimiter="\t" if kind == "tsv" else ","))
    elif kind in ("save_to_disk", "dataset_dict"):
        datasets = pytest.importorskip("datasets")
        path = folder / kind
        ds = datasets.Dataset.from_list(records)
        (datasets.DatasetDict({"train": ds, "test": ds.select([0])}) if kind == "dataset_dict" else ds
         ).save_to_disk(str(path))
    else:
        raise AssertionError(kind)
    return str(path)


ALL_KINDS = ["jsonl", "json", "parquet", "parquet-shards", "csv", "tsv", "save_to_disk", "dataset_dict"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_format_trains_to_the_same_tokens_and_labels(tok, tmp_path, kind):
    want = as_tuples(data_module.build_examples(ALPACA, tok, 64))
    assert as_tuples(load_examples(write(kind, ALPACA, tmp_path), tok, 64, progress=False)) == want


def test_a_dataset_object_a_list_and_a_generator_train_the_same(tok):
    datasets = pytest.importorskip("datasets")
    want = as_tuples(data_module.build_examples(ALPACA, tok, 64))
    ds = datasets.Dataset.from_list(ALPACA)
    assert as_tuples(load_examples(ds, tok, 64, progress=False)) == want
    assert as_tuples(load_examples(list(ALPACA), tok, 64, progress=False)) == want
    assert as_tuples(load_examples((r for r in ALPACA), tok, 64, progress=False)) == want
    # a Dataset after select/shuffle is read in its own order, not the order of the table underneath
    picked = ds.select([2, 0])
    assert as_tuples(load_examples(picked, tok, 64, progress=False)) == [want[2], want[0]]
    # a streaming IterableDataset is an iterable of dicts that can be read twice (so it can be cached)
    assert as_tuples(load_examples(ds.to_iterable_dataset(), tok, 64, progress=False)) == want


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "save_to_disk"])
def test_chats_read_the_same_from_nested_columns(tok, tmp_path, kind):
    want = as_tuples(data_module.build_examples(CHATS, tok, 64))
    assert as_tuples(load_examples(write(kind, CHATS, tmp_path), tok, 64, progress=False)) == want


def test_every_column_layout(tok):
    chat = [{"role": "user", "content": "day?"}, {"role": "assistant", "content": "5"}]
    sharegpt = [{"from": "human", "value": "day?"}, {"from": "gpt", "value": "5"}]
    alpaca = {"instruction": "day?", "output": "5"}
    completion = {"prompt": "day?", "completion": "5"}
    same = [load_examples([r], tok, 64, progress=False)[0] for r in
            ({"messages": chat}, {"conversations": sharegpt}, alpaca, {**alpaca, "input": None}, completion)]
    assert len({(tuple(e.input_ids), tuple(e.labels)) for e in same}) == 1
    answer = tok.decode([i for i, l in zip(same[0].input_ids, same[0].labels) if l != IGNORE_INDEX])
    assert answer == "5<|im_end|>\n"
    text = load_examples([{"text": "2021-03-05 is a date"}], tok, 64, progress=False)[0]
    assert text.input_ids == text.labels == tok.encode("2021-03-05 is a date", add_special_tokens=False)
    body = load_examples([{"body": "2021-03-05", "text": "other"}], tok, 64, text_field="body", progress=False)[0]
    assert tok.decode(body.input_ids) == "2021-03-05"
    ids = load_examples([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}], tok, 64, progress=False)[0]
    assert (ids.input_ids, ids.labels) == ([5, 6, 7], [-100, 6, 7])


@pytest.mark.parametrize("record, match", [
    ({"instruction": "a", "response": "b"}, r"looks like Alpaca \(instruction, output, input\) but lacks the text "
                                            r"field\(s\) \['output'\]; columns found: \['instruction', 'response'\]"),
    ({"prompt": "a", "answer": "b"}, r"looks like prompt/completion .* lacks .*\['completion'\]"),
    ({"question": "a", "answer": "b"}, r"cannot tell the format of a record with columns \['answer', 'question'\]"),
    ({"instruction": "a", "output": 5}, r"'output' must be text, got int"),
    ({"messages": "[{\"role\": \"user\"}]"}, r"'messages' must be a list of turns, got text"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"has no assistant message"),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, r"needs a role"),
])
def test_records_that_fit_no_layout_get_one_line_naming_the_row(tok, tmp_path, record, match):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=match) as e:
        load_examples(str(path), tok, 64, progress=False)
    assert str(e.value).startswith(f"{path}, line 2") and "\n" not in str(e.value)


def test_table_errors_name_file_row_and_column(tok, tmp_path):
    path = write("parquet", ALPACA + [{"instruction": "x", "input": None, "output": None}], tmp_path)
    with pytest.raises(DataError, match=r"d.parquet, row 4 looks like Alpaca .* lacks .*\['output'\]"):
        load_examples(path, tok, 64, progress=False)
    with pytest.raises(DataError, match=r"row 0 has no text column 'body' \(text_field\)"):
        load_examples(write("csv", ALPACA, tmp_path / "c"), tok, 64, text_field="body", progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"instruction,output\nfine,2021-03-05\ncaf\xe9,2021\n")
    with pytest.raises(DataError, match=r"bad.csv, row 1, column 'instruction', byte 3: not UTF-8 text \(0xe9\)"):
        load_examples(str(bad), tok, 64, progress=False)


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.parquet", "does not exist"),
    (lambda p: (p / "d.xlsx").write_text("x") and p / "d.xlsx", "unknown data file type '.xlsx'"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no data files"),
    (lambda p: (p / "d.jsonl").write_text("\n\n") and p / "d.jsonl", "holds no records"),
])
def test_paths_that_hold_no_data(tok, tmp_path, make, match):
    with pytest.raises(DataError, match=match):
        load_examples(str(make(tmp_path)), tok, 64, progress=False)


def test_mixed_shards_and_dataset_dicts_without_train_are_refused(tok, tmp_path):
    folder = tmp_path / "mixed"
    write("parquet", ALPACA, folder)
    write("jsonl", ALPACA, folder)
    with pytest.raises(DataError, match=r"mixes data files of several types \['.jsonl', '.parquet'\]"):
        load_examples(str(folder), tok, 64, progress=False)
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(ALPACA)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"without a 'train' split \(splits: \['validation'\]\)"):
        load_examples(str(tmp_path / "dd"), tok, 64, progress=False)
    with pytest.raises(DataError, match="pass one split"):
        load_examples(datasets.load_from_disk(str(tmp_path / "dd")), tok, 64, progress=False)


# --- the cache ------------------------------------------------------------------------------------------------------
def count_tokenizing(monkeypatch):
    calls = []
    real = data_module.example_from_record
    monkeypatch.setattr(data_module, "example_from_record", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cache_hits_and_gives_the_same_examples(tok, tmp_path, monkeypatch):
    path = write("parquet", ALPACA, tmp_path)
    cache = tmp_path / "cache"
    calls = count_tokenizing(monkeypatch)
    first = load_examples(path, tok, 64, cache_dir=cache, progress=False)
    assert len(calls) == len(ALPACA) and len(os.listdir(cache)) == 1
    second = load_examples(path, tok, 64, cache_dir=cache, progress=False)
    assert len(calls) == len(ALPACA)  # read back, not tokenized again
    assert as_tuples(second) == as_tuples(first)
    assert [f for f in os.listdir(cache) if not f.endswith(".safetensors")] == []  # no staging leftovers


@pytest.mark.filterwarnings("ignore:.*were cut to it")  # max_seq_length=56 cuts one example
@pytest.mark.parametrize("change", ["data", "tokenizer", "max_seq_length", "text_field"])
def test_cache_misses_on_any_change_and_a_stale_cache_is_never_read(tok, tmp_path, monkeypatch, change):
    path = tmp_path / "d.jsonl"
    rows = [dict(r, text=r["output"]) for r in ALPACA]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    load_examples(str(path), tok, 64, cache_dir=cache, progress=False)
    kw = dict(max_seq_length=64)
    tok2 = tok
    if change == "data":  # same size, same line count: only the bytes differ
        path.write_text(path.read_text().replace("2021-03-05", "2021-03-06"))
    elif change == "tokenizer":
        tok2 = tiny_tokenizer()
        tok2.chat_template = tok.chat_template.replace("'\n'", "'\n\n'")
    elif change == "max_seq_length":
        kw["max_seq_length"] = 56
    else:
        kw["text_field"] = "text"
    calls = count_tokenizing(monkeypatch)
    got = load_examples(str(path), tok2, cache_dir=cache, progress=False, **kw)
    assert len(calls) == len(ALPACA)  # tokenized afresh
    fresh = load_examples(str(path), tok2, progress=False, **kw)
    assert as_tuples(got) == as_tuples(fresh)
    assert len(os.listdir(cache)) == 2


def test_a_damaged_cache_file_is_ignored_and_replaced(tok, tmp_path, monkeypatch):
    path = write("jsonl", ALPACA, tmp_path)
    cache = tmp_path / "cache"
    want = as_tuples(load_examples(path, tok, 64, cache_dir=cache, progress=False))
    (cached,) = cache.iterdir()
    cached.write_bytes(cached.read_bytes()[:-7])
    calls = count_tokenizing(monkeypatch)
    assert as_tuples(load_examples(path, tok, 64, cache_dir=cache, progress=False)) == want
    assert len(calls) == len(ALPACA)
    assert as_tuples(load_examples(path, tok, 64, cache_dir=cache, progress=False)) == want
    assert len(calls) == len(ALPACA)  # the replaced file is whole again


def test_a_one_shot_iterator_cannot_be_cached(tok, tmp_path):
    with pytest.raises(DataError, match="one-shot iterator"):
        load_examples(iter(ALPACA), tok, 64, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_a_file_that_changes_while_read_is_not_cached(tok, tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    real = data_module.example_from_record

    def touching(*a, **k):
        os.utime(path, ns=(1, 1))  # another process rewrote the file meanwhile
        return real(*a, **k)

    monkeypatch.setattr(data_module, "example_from_record", touching)
    with pytest.raises(DataError, match="changed while it was being read; nothing was cached"):
        load_examples(str(path), tok, 64, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --- hostile files --------------------------------------------------------------------------------------------------
def parquet_bytes(tmp_path, n=300) -> bytes:
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": f"x{i}"} for i in range(n)]),
                   tmp_path / "good.parquet")
    return (tmp_path / "good.parquet").read_bytes()


def _zigzag_varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def footer_length(raw: bytes) -> int:
    return int.from_bytes(raw[-8:-4], "little")


def with_rows_claimed(raw: bytes, rows: int, claimed: int, which=("file", "row group")) -> bytes:
    """The file whose footer (thrift: i64 fields, zigzag varints) claims ``claimed`` rows instead of ``rows``: in the
    file's total (the first such field) and/or the row group's (the last)."""
    footer = raw[-8 - footer_length(raw):-8]
    old, new = b"\x16" + _zigzag_varint(rows), b"\x16" + _zigzag_varint(claimed)
    if "row group" in which:
        at = footer.rindex(old)
        footer = footer[:at] + new + footer[at + len(old):]
    if "file" in which:
        at = footer.index(old)
        footer = footer[:at] + new + footer[at + len(old):]
    return raw[:-8 - footer_length(raw)] + footer + len(footer).to_bytes(4, "little") + b"PAR1"


@pytest.mark.parametrize("damage, match", [
    (lambda raw: raw[:-8] + (10**9).to_bytes(4, "little") + b"PAR1", r"not a readable Parquet file"),
    (lambda raw: raw[:4] + raw[-8 - footer_length(raw):], r"row group 0: damaged data"),  # claims absent bytes
    (lambda raw: raw[:4] + raw[400:], r"row group 0: damaged data"),
    (lambda raw: with_rows_claimed(raw, 300, 10**15), r"row group 0 claims 1000000000000000 rows but holds 300"),
    (lambda raw: with_rows_claimed(raw, 300, 10**15, ["file"]),
     r"the footer claims 1000000000000000 rows but its row groups claim 300"),
    (lambda raw: raw[:-20], r"not a readable Parquet file"),
    (lambda raw: b"PAR1" + bytes(100), r"not a readable Parquet file"),
])
def test_hostile_parquet_is_one_clear_line_and_nothing_is_written(tok, tmp_path, damage, match):
    path = tmp_path / "bad.parquet"
    path.write_bytes(damage(parquet_bytes(tmp_path)))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=match) as e:
        load_examples(str(path), tok, 64, cache_dir=cache, progress=False)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_csv_or_jsonl_line_past_the_limit_is_refused_quickly(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(records_module, "MAX_LINE_BYTES", 1 << 20)  # the same code path as the 64 MiB default
    csv_path, jsonl_path = tmp_path / "long.csv", tmp_path / "long.jsonl"
    csv_path.write_text("instruction,output\nshort,2021\n" + "a" * (3 << 20) + ",b\n")
    jsonl_path.write_text(json.dumps(ALPACA[0]) + "\n" + json.dumps({"instruction": "a" * (3 << 20)}) + "\n")
    with pytest.raises(DataError, match=r"long.csv, row 1 or after: a row longer than 1 MiB"):
        load_examples(str(csv_path), tok, 64, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match=r"long.jsonl, line 2 is longer than 1 MiB"):
        load_examples(str(jsonl_path), tok, 64, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_1_gb_line_is_refused_after_reading_at_most_the_limit(tok, tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    with open(path, "wb") as f:
        f.write(b"instruction,output\n" if suffix == ".csv" else b'{"instruction": "a", "output": "b"}\n')
        f.truncate(1 << 30)  # a sparse file: one line of 1 GiB (of NUL bytes) that costs no disk
    with pytest.raises(DataError, match=r"longer than 64 MiB"):
        load_examples(str(path), tok, 64, progress=False)  # (with a cache_dir, the file's hash reads it all first)


def test_hostile_save_to_disk_folders(tok, tmp_path):
    path = write("save_to_disk", ALPACA, tmp_path)
    state = json.loads(open(os.path.join(path, "state.json")).read())
    arrow = os.path.join(path, state["_data_files"][0]["filename"])
    raw = open(arrow, "rb").read()
    open(arrow, "wb").write(raw[:len(raw) // 2])
    with pytest.raises(DataError, match=r"(not a readable Arrow file|damaged data)"):
        load_examples(path, tok, 64, progress=False)
    state["_data_files"] = [{"filename": "../../outside.arrow"}]
    open(os.path.join(path, "state.json"), "w").write(json.dumps(state))
    with pytest.raises(DataError, match="points outside the dataset folder"):
        load_examples(path, tok, 64, progress=False)


def test_a_json_file_too_large_to_parse_whole_is_refused(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(records_module, "MAX_JSON_BYTES", 100)
    path = write("json", ALPACA, tmp_path)
    with pytest.raises(DataError, match=r"a .json file is parsed whole.*save it as .jsonl"):
        load_examples(path, tok, 64, progress=False)


def test_processes_writing_one_cache_at_once_leave_one_whole_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from minilora.train.example_cache import read_cache, write_cache
    pairs = [([5, 6, 7], [-100, 6, 7], 0)] * 2000
    path = str(tmp_path / "examples-k.safetensors")
    with ThreadPoolExecutor(4) as pool:  # like torchrun ranks that all missed the cache
        list(pool.map(lambda _: write_cache(path, "k", pairs), range(8)))
    assert read_cache(path, "k") == pairs and os.listdir(tmp_path) == ["examples-k.safetensors"]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)  # any Unicode but surrogates


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"instruction": TEXT, "input": st.one_of(st.just(""), TEXT),
                                            "output": TEXT}), min_size=1, max_size=4))
@example(rows=[{"instruction": 'a,"b"\r\nc\rd\te\u2028f\x85g\x00h', "input": "\ufeffNA", "output": " null "}])
def test_any_text_survives_every_file_format(tok, tmp_path_factory, rows):
    """Quotes, commas, tabs, CR/LF, U+2028, U+0085, NUL, a byte-order mark: what a file format must carry."""
    want = as_tuples(data_module.build_examples(rows, tok, 512))
    folder = tmp_path_factory.mktemp("rows")
    for kind in ("jsonl", "parquet", "csv", "tsv"):
        got = as_tuples(load_examples(write(kind, rows, folder / kind), tok, 512, progress=False))
        assert got == want, kind


def test_a_spreadsheet_csv_with_a_byte_order_mark_and_crlf_reads_like_the_records(tok, tmp_path):
    path = tmp_path / "sheet.csv"
    lines = ["instruction,input,output"] + [",".join('"' + r[k].replace('"', '""') + '"' for k in r) for r in ALPACA]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    assert data_module.read_records(str(path)) == ALPACA


def test_the_command_line_trains_from_parquet_shards_and_names_a_bad_row(tmp_path, capsys):
    from helpers.train import tiny_model

    from minilora.cli import main
    from minilora.save import save_pretrained_merged
    base = tmp_path / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(base), dtype="float32")
    run = ["train", "--model_name", str(base), "--max_steps", "1", "--no_progress", "--overwrite_output_dir",
           "--output_dir", str(tmp_path / "out")]
    assert main(run + ["--dataset", write("parquet-shards", ALPACA, tmp_path)]) == 0
    capsys.readouterr()
    bad = write("csv", [{"instruction": r["instruction"], "response": r["output"]} for r in ALPACA], tmp_path / "b")
    assert main(run + ["--dataset", bad]) == 1
    err = capsys.readouterr().err
    # (the row is named by file once the command reads through load_examples; by position before)
    assert re.search(r"(d\.csv, row|record) 0 looks like Alpaca", err) and "lacks the text field(s) ['output']" in err
    assert err.count("\n") == 1 and "Traceback" not in err

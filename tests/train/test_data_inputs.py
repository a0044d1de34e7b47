"""Data inputs that deserve one clear answer: JSON Lines read as JSON defines them, text that is not UTF-8, chat turns
of the wrong shape, records too long for any template, examples longer than max_seq_length on every path, and
pre-tokenized records whose labels or ids are wrong."""
import json

import pytest
import torch
from helpers.train import tiny_model, tiny_tokenizer

from minilora.train import DataError, Example, Trainer, TrainingArguments, build_examples, read_records


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_jsonl_with_unicode_line_separators_inside_a_string_is_valid(tmp_path, char):
    record = {"instruction": f"a{char}b", "output": "c"}
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    assert read_records(str(p)) == [record, record]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_data_names_the_file_line_and_byte(tmp_path, suffix):
    good = json.dumps({"instruction": "a", "output": "b"}).encode()
    bad = b'{"instruction": "caf\xe9", "output": "b"}'
    p = tmp_path / f"d{suffix}"
    p.write_bytes(good + b"\n" + bad + b"\n" if suffix == ".jsonl" else b"[" + good + b", " + bad + b"]")
    where = r"line 2, byte \d+" if suffix == ".jsonl" else r"byte \d+"
    with pytest.raises(DataError, match=rf"{p.name}, {where}: not UTF-8 text \(0xe9\)"):
        read_records(str(p))


def test_non_utf8_raw_text_names_the_file_and_byte(tmp_path):
    from minilora.io.records import read_text_file
    p = tmp_path / "corpus.txt"
    p.write_bytes("line one\nline two ".encode() + b"\xff\xfe")
    with pytest.raises(DataError, match=r"corpus.txt, byte 18: not UTF-8 text \(0xff\)"):
        read_text_file(p)


def test_a_lone_surrogate_is_named_not_a_tokenizer_traceback(tok, tmp_path):
    from minilora.train import load_examples
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a\\ud800b", "output": "c"}\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: the text holds a lone surrogate \('\\ud800' at "
                                        r"character 1\)"):
        load_examples(str(p), tok, 64, progress=False)


def test_nan_is_not_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b", "score": NaN}\n')
    with pytest.raises(DataError, match="line 1: NaN is not a JSON value"):
        read_records(str(p))


@pytest.mark.parametrize("turn, match", [
    (["user", "hi"], r"turn 0 is a list"),
    ({"role": "user", "content": [{"type": "text", "text": "hi"}]}, r"turn 0 .*'content' is a list"),
])
def test_chat_turn_of_the_wrong_shape_is_named(tok, turn, match):
    record = {"messages": [turn, {"role": "assistant", "content": "hello"}]}
    with pytest.raises(DataError, match=match):
        build_examples([record], tok, 64)


def test_a_long_record_is_not_blamed_on_the_chat_template(tok):
    from minilora.io.chat_template import MAX_CHARS
    record = {"instruction": "x" * (MAX_CHARS + 10), "output": "y"}
    with pytest.raises(DataError, match=r"record 0 holds [\d,]+ characters") as e:
        build_examples([record], tok, 64)
    assert "template" not in str(e.value).split(";")[0]


def test_a_3000_token_example_is_truncated_when_tokenized(tok):
    with pytest.warns(UserWarning, match="1 of 1 examples were longer than max_seq_length=64"):
        (ex,) = build_examples([{"instruction": "a", "output": " 1" * 3000}], tok, 64)
    assert len(ex.input_ids) == len(ex.labels) == 64


@pytest.mark.parametrize("packing", [False, True])
def test_the_trainer_refuses_an_example_longer_than_max_seq_length(tmp_path, packing):
    ids = list(range(3, 203)) * 15  # 3,000 tokens
    args = TrainingArguments(output_dir=str(tmp_path), max_seq_length=64, max_steps=1, packing=packing,
                             progress_bar=False)
    with pytest.raises(ValueError, match=r"3000 tokens.*max_seq_length=64"):
        Trainer(tiny_model(), args, [Example(ids, ids)]).train()


def test_the_trainer_refuses_labels_shorter_than_input_ids_and_float_ids(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, progress_bar=False)
    model = tiny_model()
    with pytest.raises(ValueError, match=r"example 1: labels has 2 entries but input_ids 3"):
        Trainer(model, args, [Example([3, 4, 5], [3, 4, 5]), Example([3, 4, 5], [4, 5])]).train()
    with pytest.raises(ValueError, match=r"example 0: input_ids holds a float \(4.0\)"):
        Trainer(model, args, [Example([3, 4.0, 5], [3, 4, 5])]).train()


@pytest.mark.parametrize("record, match", [
    ({"input_ids": [3, 4, 5], "labels": [4, 5]}, r"record 0: 'labels' has 2 entries but 'input_ids' 3"),
    ({"input_ids": [3, 4.0, 5]}, r"record 0: 'input_ids' holds a float \(4.0\)"),
    ({"input_ids": [3, 4, 5], "labels": [3, 4.5, 5]}, r"record 0: 'labels' holds a float \(4.5\)"),
    ({"input_ids": "3 4 5"}, r"record 0: 'input_ids' must be a list of token ids"),
    ({"input_ids": [3, 4, 0], "attention_mask": [1, 1, 0]}, r"record 0: 'attention_mask' is not all 1s"),
    ({"input_ids": [3, -4, 5]}, r"record 0: 'input_ids' holds -4; ids are >= 0"),
    ({"input_ids": [3, 4, 5], "labels": [3, -5, 5]}, r"'labels' holds -5; ids are >= 0 \(or -100"),
    ({"input_ids": [3, 4, 10**6]}, r"'input_ids' holds the id 1000000, past the tokenizer's \d+ tokens"),
])
def test_pre_tokenized_records_with_wrong_labels_or_ids_name_the_row(tok, record, match):
    with pytest.raises(DataError, match=match):
        build_examples([record], tok, 64)


def test_pre_tokenized_records_train_as_given_and_truncate(tok):
    ids = list(range(3, 103))
    labels = [-100] * 50 + ids[50:]
    with pytest.warns(UserWarning, match="1 of 2 examples were longer than max_seq_length=64"):
        (a, b) = build_examples([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:10]}], tok, 64)
    assert a.input_ids == ids[:64] and a.labels == labels[:64]
    assert b.input_ids == b.labels == ids[:10]
    assert torch.tensor(a.input_ids).dtype == torch.long


def test_truncation_is_said_once_and_survives_the_cache(tok, tmp_path):
    from minilora.train import load_examples
    records = [{"instruction": "a", "output": " 1" * 3000}, {"instruction": "a", "output": "b"}]
    for _ in range(2):  # the second call reads the cache and says it again
        with pytest.warns(UserWarning, match=r"1 of 2 examples were longer than max_seq_length=64 and were cut"):
            long, short = load_examples(records, tok, 64, cache_dir=tmp_path, progress=False)
        assert len(long) == 64 and long.truncated > 2900 and short.truncated == 0


def test_the_command_line_names_a_raw_text_file_that_is_not_utf8(tmp_path, capsys):
    from minilora.cli import main
    from minilora.save import save_pretrained_merged
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(tmp_path / "base"), dtype="float32")
    (tmp_path / "bad.txt").write_bytes(b"hello \xff world " * 20)
    assert main(["train", "--model_name", str(tmp_path / "base"), "--max_steps", "1", "--no_progress",
                 "--output_dir", str(tmp_path / "o"), "--raw_text_file", str(tmp_path / "bad.txt")]) == 1
    assert "bad.txt, byte 6: not UTF-8 text (0xff)" in capsys.readouterr().err

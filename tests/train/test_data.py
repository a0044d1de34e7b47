"""Data formats, response-only masking, raw-text chunking and the bundled dates task (packing: test_packing.py)."""
import json

import pytest
from helpers.train import tiny_model, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.train import (
    IGNORE_INDEX,
    DataError,
    Example,
    build_examples,
    chunk_text,
    collate,
    dates_task,
    mask_prompt,
    read_records,
    to_messages,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def trained_text(tok, ex):
    return tok.decode([i for i, l in zip(ex.input_ids, ex.labels) if l != IGNORE_INDEX])


def test_alpaca_record_trains_on_the_answer_only(tok):
    rec = {"instruction": "Rewrite the date", "input": "March 5, 2021", "output": "2021-03-05"}
    (ex,) = build_examples([rec], tok, 128)
    assert trained_text(tok, ex) == "2021-03-05<|im_end|>\n"
    assert tok.decode(ex.input_ids).startswith("<|im_start|>user\nRewrite the date\n\nMarch 5, 2021")


def test_multi_turn_chat_masks_every_user_turn(tok):
    rec = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "day?"},
                        {"role": "assistant", "content": "5"}, {"role": "user", "content": "year?"},
                        {"role": "assistant", "content": "2021"}]}
    (ex,) = build_examples([rec], tok, 128)
    assert trained_text(tok, ex) == "5<|im_end|>\n2021<|im_end|>\n"
    assert len(ex.input_ids) == len(ex.labels)
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(rec["messages"], tokenize=False)


def test_sharegpt_style_records_are_read(tok):
    rec = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert to_messages(rec) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_missing_response_marker_is_an_error_not_a_silent_mask(tok):
    with pytest.raises(DataError, match="response marker"):
        mask_prompt(tok, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>bot\nhello<|im_end|>\n",
                    response_marker="<|im_start|>assistant\n")
    tok2 = tiny_tokenizer()
    tok2.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(DataError, match="response marker"):
        build_examples([{"instruction": "a", "output": "b"}], tok2, 64)


def test_prompt_longer_than_max_seq_length_is_an_error(tok):
    rec = {"instruction": "word " * 60, "output": "x"}
    with pytest.raises(DataError, match="no answer tokens within max_seq_length"):
        build_examples([rec], tok, 16)


@pytest.mark.parametrize("records, match", [
    ([], "empty"),
    ([{"instruction": "a"}], "lacks the text field"),
    ([{"question": "a", "answer": "b"}], "cannot tell the format"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant message"),
])
def test_bad_records(tok, records, match):
    with pytest.raises(DataError, match=match):
        build_examples(records, tok, 64)


def test_read_records_json_and_jsonl(tmp_path):
    recs = [{"instruction": "a", "output": "b"}] * 2
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    assert read_records(str(tmp_path / "d.json")) == recs == read_records(str(tmp_path / "d.jsonl"))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="no records"):
        read_records(str(tmp_path / "empty.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_records(str(tmp_path / "bad.json"))
    with pytest.raises(DataError, match="does not exist"):
        read_records(str(tmp_path / "missing.json"))


@settings(max_examples=15, deadline=None)
@given(n_words=st.integers(5, 60), chunk=st.integers(4, 20), frac=st.floats(0.2, 1.0))
def test_chunk_text_windows_cover_every_token(n_words, chunk, frac):
    tok = tiny_tokenizer()
    text = " ".join(f"date{i % 7}" for i in range(n_words))
    stride = max(1, int(chunk * frac))
    ids = tok.encode(text, add_special_tokens=False)
    chunks = chunk_text(tok, text, chunk, stride)
    assert all(len(c) <= chunk and c.labels == c.input_ids for c in chunks)
    covered = set()
    for k, c in enumerate(chunks):  # window k starts at k * stride; a last window may be aligned to the end
        start = k * stride if k * stride + len(c) <= len(ids) and ids[k * stride:k * stride + len(c)] == c.input_ids \
            else len(ids) - len(c)
        assert ids[start:start + len(c)] == c.input_ids
        covered.update(range(start, start + len(c)))
    assert covered == set(range(len(ids)))


def test_collate_pads_with_ignored_labels():
    batch = collate([Example([5, 6, 7], [-100, 6, 7]), Example([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_dates_task_splits_are_disjoint_seeded_and_iso():
    train, held = dates_task.make_splits(300, 60, seed=3)
    assert dates_task.make_splits(300, 60, seed=3) == (train, held)
    assert not {r["output"] for r in train} & {r["output"] for r in held}
    styles = {r["input"].split()[0].isdigit() for r in held}
    assert styles == {True, False}
    assert all(len(r["output"]) == 10 and r["output"][4] == "-" for r in held)
    assert dates_task.make_example(__import__("datetime").date(2021, 3, 5), "abbrev")["input"] == "Mar 5 2021"


def test_exact_match_counts_only_exact_answers(tok):
    model = tiny_model()
    train, held = dates_task.make_splits(10, 5, seed=0)
    correct, answers = dates_task.exact_match(model, tok, held, max_new_tokens=4)
    assert correct == 0 and len(answers) == 5 and all(isinstance(a, str) for a in answers)

"""Which columns a record has, and what they mean: the record layouts minilora understands.

| layout | columns | becomes |
|---|---|---|
| chat | ``messages``: [{role, content}, ...] | the conversation, through the chat template |
| ShareGPT | ``conversations``: [{from: human/gpt/system, value}, ...] | the same |
| Alpaca | ``instruction``, ``output``, optional ``input`` | one user turn and one answer |
| prompt/completion | ``prompt``, ``completion`` | one user turn and one answer |
| pre-tokenized | ``input_ids``, optional ``labels`` (-100 = not trained on) | the ids as given |
| raw text | ``text`` (or the column named by ``text_field``) | every token is trained on |

The first layout whose columns are all there wins, in the order of the table; ``text_field`` picks the raw text
column explicitly (and then wins). A record that fits none gets one line naming where it is, the columns found and,
for the closest layout, the column it lacks. Nothing is converted silently: a number where text belongs, a chat turn
given as a list, a float token id — each is refused with the record named.
"""
from __future__ import annotations

from ..io.records import DataError
from ..kernels import IGNORE_INDEX

# name, required columns, optional columns (priority order: the first complete match wins)
LAYOUTS = [
    ("chat", ("messages",), ()),
    ("ShareGPT", ("conversations",), ()),
    ("Alpaca", ("instruction", "output"), ("input",)),
    ("prompt/completion", ("prompt", "completion"), ()),
    ("pre-tokenized", ("input_ids",), ("labels", "attention_mask")),
    ("raw text", ("text",), ()),
]
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def record_name(index) -> str:
    """How errors name a record: "record 3" for a position, else the reader's own "file, line 7" or "file, row 7"."""
    return f"record {index}" if isinstance(index, int) else str(index)


def _present(record: dict, column: str) -> bool:
    return record.get(column) is not None  # a null cell (Parquet, Arrow) is a missing value


def detect_layout(record: dict, index=0, text_field: str | None = None) -> str:
    """The layout name of ``record`` (see the table), or a DataError naming the closest layout's missing column."""
    if text_field is not None:
        if not _present(record, text_field):
            raise DataError(f"{record_name(index)} has no text column {text_field!r} (text_field); columns found: "
                            f"{sorted(record)}")
        return "raw text"
    for name, required, _ in LAYOUTS:
        if all(_present(record, c) for c in required):
            return name
    found = sorted(record)
    scored = [(sum(_present(record, c) for c in req) / len(req), -k, name, req, opt)
              for k, (name, req, opt) in enumerate(LAYOUTS)]
    score, _, name, required, optional = max(scored)
    if score == 0:
        raise DataError(f"{record_name(index)}: cannot tell the format of a record with columns {found}: use chat "
                        "('messages'), ShareGPT ('conversations'), Alpaca ('instruction', 'input', 'output'), "
                        "'prompt'/'completion', pre-tokenized ('input_ids'), or name a raw text column with "
                        "text_field (--dataset_text_field)")
    missing = [c for c in required if not _present(record, c)]
    columns = ", ".join(required + optional)
    raise DataError(f"{record_name(index)} looks like {name} ({columns}) but lacks the text field(s) {missing}; columns "
                    f"found: {found}")


def text_column(record: dict, column: str, index) -> str:
    value = record[column]
    if not isinstance(value, str):
        raise DataError(f"{record_name(index)}: '{column}' must be text, got {type(value).__name__} {value!r:.60}")
    return value


def _turns(raw, column: str, index) -> list[dict]:
    where = record_name(index)
    if isinstance(raw, str):
        raise DataError(f"{where}: '{column}' must be a list of turns, got text (CSV cells are text only: keep "
                        "chats in JSON Lines or Parquet)")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise DataError(f"{where}: '{column}' must be a non-empty list of {{role, content}} objects")
    messages = []
    for k, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: turn {k} is a {type(turn).__name__}; each turn is an object "
                            '{"role": "user" | "assistant" | "system", "content": "..."}')
        role = turn.get("role", SHAREGPT_ROLES.get(turn.get("from"), turn.get("from")))
        key = "content" if "content" in turn else "value"
        content = turn.get(key)
        if isinstance(content, (list, tuple)):
            raise DataError(f"{where}: in turn {k} the '{key}' is a list (of parts?); minilora trains on text: give "
                            "each turn's content as one string")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise DataError(f"{where}: each message needs a role (system/user/assistant) and a text 'content'; "
                            f"turn {k} is {turn!r:.120}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where} has no assistant message: there would be nothing to learn")
    return messages


def to_messages(record: dict, index=0) -> list[dict]:
    """A chat, ShareGPT, Alpaca or prompt/completion record as a list of chat messages."""
    layout = detect_layout(record, index)
    if layout in ("chat", "ShareGPT"):
        column = "messages" if layout == "chat" else "conversations"
        return _turns(record[column], column, index)
    if layout == "Alpaca":
        instruction, output = text_column(record, "instruction", index), text_column(record, "output", index)
        extra = text_column(record, "input", index) if _present(record, "input") else ""
        user = instruction + (f"\n\n{extra}" if extra else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if layout == "prompt/completion":
        return [{"role": "user", "content": text_column(record, "prompt", index)},
                {"role": "assistant", "content": text_column(record, "completion", index)}]
    raise DataError(f"{record_name(index)} is {layout}, not a conversation")


def token_ids(values, column: str, index, vocab_size: int | None = None, labels: bool = False) -> list[int]:
    """A pre-tokenized column as a list of ints: floats, booleans, negative ids (labels: other than -100) and ids
    past the vocabulary are refused with the record named."""
    where = record_name(index)
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # a numpy array: its values as they are (a float array stays float, and is refused)
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{where}: '{column}' must be a list of token ids, got {type(values).__name__}")
    for v in values:
        if type(v) is not int:
            raise DataError(f"{where}: '{column}' holds a {type(v).__name__} ({v!r}); token ids are integers")
    low = min(values, default=0)
    if low < 0 and not (labels and all(v >= 0 or v == IGNORE_INDEX for v in values)):
        raise DataError(f"{where}: '{column}' holds {low}; ids are >= 0" + (" (or -100 for a label that is not "
                                                                          "trained on)" if labels else ""))
    if vocab_size is not None and max(values, default=0) >= vocab_size:
        raise DataError(f"{where}: '{column}' holds the id {max(values)}, past the tokenizer's {vocab_size} tokens "
                        "(tokenized with another tokenizer?)")
    return list(values)


def pre_tokenized(record: dict, index, vocab_size: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a pre-tokenized record; labels default to the ids (every token trained on)."""
    ids = token_ids(record["input_ids"], "input_ids", index, vocab_size)
    if _present(record, "attention_mask"):
        mask = token_ids(record["attention_mask"], "attention_mask", index)
        if len(mask) != len(ids) or set(mask) - {1}:
            raise DataError(f"{record_name(index)}: 'attention_mask' is not all 1s over the {len(ids)} tokens: "
                            "store examples without padding (minilora pads each batch itself), or drop the column")
    if not _present(record, "labels"):
        return ids, list(ids)
    labels = token_ids(record["labels"], "labels", index, vocab_size, labels=True)
    if len(labels) != len(ids):
        raise DataError(f"{record_name(index)}: 'labels' has {len(labels)} entries but 'input_ids' {len(ids)}; they "
                        "must be the same length (one label per token, -100 where nothing is trained)")
    return ids, labels


def record_chars(record: dict, index=0) -> int:
    """Characters of text in a record (its strings, nested ones included): what a chat template would render.
    A lone surrogate (JSON can spell one, ``"\\ud800"``, but it is no character) is refused here, by record."""
    stack, total = [record], 0
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise DataError(f"{record_name(index)}: the text holds a lone surrogate "
                                    f"({value[e.start]!r} at character {e.start}), which is no Unicode character; "
                                    "fix the escape in the file") from None
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return total

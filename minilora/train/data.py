"""Training data: from records on disk to (input_ids, labels) with the prompt masked.

Three formats, as Unsloth's notebooks use them:
- Alpaca: ``{"instruction", "input" (optional), "output"}`` — one user turn and one answer;
- chat: ``{"messages": [{"role": "user" | "assistant" | "system", "content": ...}, ...]}`` rendered with the
  model's chat template;
- raw text: one long string cut into windows of ``chunk_size`` tokens that overlap by ``chunk_size - stride``.

Response-only training: the loss should teach the model to *answer*, not to predict the question it was given.
Every token of the rendered prompt gets the label -100 (ignored by cross-entropy) and only the answer tokens keep
their ids. We find the answers by a *response marker* — the text the template puts just before an assistant turn
(ChatML: ``"<|im_start|>assistant\\n"``) — and the prompt turns by an *instruction marker*
(``"<|im_start|>user\\n"``). If the marker never appears we refuse: silently masking every label would train on
nothing and still print a loss.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..kernels import IGNORE_INDEX

#: markers for the templates minilora knows; others can be passed explicitly
KNOWN_MARKERS = {
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "alpaca": ("### Instruction:\n", "### Response:\n"),
}

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


class DataError(ValueError):
    """A dataset or template problem, with what was wrong and how to fix it."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    def __len__(self):
        return len(self.input_ids)


# --- reading records ---------------------------------------------------------------------------------------------
def read_records(path: str) -> list[dict]:
    """Records from a ``.json`` file (a list of objects) or a ``.jsonl`` file (one object per line)."""
    if not os.path.isfile(path):
        raise DataError(f"dataset file {path!r} does not exist; pass a .json or .jsonl file, or 'dates' for the "
                        "bundled task")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        records = []
        for number, line in enumerate(text.splitlines(), start=1):  # line numbers as an editor shows them
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); a .jsonl "
                                "file holds one JSON object per line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object ({{...}}), got "
                                f"{type(record).__name__}")
            records.append(record)
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); expected a list of objects (.json) or one object per "
                            "line (.jsonl)") from None
    if isinstance(records, dict) and "train" in records:
        records = records["train"]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path} must hold a list of JSON objects (records)")
    if not records:
        raise DataError(f"{path} holds no records: an empty dataset cannot train anything")
    return records


def detect_format(record: dict) -> str:
    if "messages" in record or "conversations" in record:
        return "chat"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    raise DataError(f"cannot tell the format of a record with keys {sorted(record)}: use Alpaca "
                    "(instruction, input, output), chat ('messages': [{role, content}, ...]) or raw text ('text')")


def to_messages(record: dict, index: int = 0) -> list[dict]:
    """One record (Alpaca or chat) as a list of chat messages; missing fields are an error naming the record."""
    fmt = detect_format(record)
    if fmt == "alpaca":
        missing = [k for k in ("instruction", "output") if not isinstance(record.get(k), str)]
        if missing:
            raise DataError(f"record {index} is Alpaca-style but lacks the text field(s) {missing}; each record "
                            "needs 'instruction' and 'output' (and optionally 'input')")
        user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    if fmt == "chat":
        raw = record.get("messages", record.get("conversations"))
        if not isinstance(raw, list) or not raw:
            raise DataError(f"record {index}: 'messages' must be a non-empty list of {{role, content}} objects")
        messages = []
        for turn in raw:
            role = turn.get("role", {"human": "user", "gpt": "assistant"}.get(turn.get("from"), turn.get("from")))
            content = turn.get("content", turn.get("value"))
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise DataError(f"record {index}: each message needs a role (system/user/assistant) and a text "
                                f"'content'; got {turn!r}")
            messages.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"record {index} has no assistant message: there would be nothing to learn")
        return messages
    raise DataError(f"record {index} is raw text; use raw_text_file / chunk_text for raw text")


# --- tokenizing ----------------------------------------------------------------------------------------------------
def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens written in it recognized and no BOS/EOS added."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The conversation as the model sees it, through the tokenizer's chat template (or Alpaca's prompt)."""
    if getattr(tokenizer, "chat_template", None) is None and not hasattr(tokenizer, "apply_chat_template"):
        user = next(m["content"] for m in messages if m["role"] == "user")
        answer = next(m["content"] for m in messages if m["role"] == "assistant")
        return ALPACA_PROMPT.format(instruction=user, input="") + answer + (getattr(tokenizer, "eos_token", "") or "")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def guess_markers(text: str) -> tuple[str, str]:
    for instruction, response in KNOWN_MARKERS.values():
        if response in text:
            return instruction, response
    raise DataError("no known response marker in the rendered example (tried "
                    f"{', '.join(repr(r) for _, r in KNOWN_MARKERS.values())}); pass response_marker= and "
                    f"instruction_marker= matching your chat template. The example begins: {text[:120]!r}")


def mask_prompt(tokenizer, text: str, response_marker: str | None = None,
                instruction_marker: str | None = None) -> Example:
    """Tokenize ``text`` and keep labels only on the answers (the text after each response marker up to the next
    instruction marker). The pieces are tokenized one by one, so the boundaries fall exactly on the markers."""
    if response_marker is None:
        instruction_marker, response_marker = guess_markers(text)
    if response_marker not in text:
        raise DataError(f"the response marker {response_marker!r} does not occur in the rendered example, so the "
                        "answer cannot be told from the prompt (every label would be masked). Check the chat "
                        f"template or pass the right marker. The example begins: {text[:120]!r}")
    input_ids, labels = [], []

    def add(piece: str, train: bool):
        if piece:
            ids = encode(tokenizer, piece)
            input_ids.extend(ids)
            labels.extend(ids if train else [IGNORE_INDEX] * len(ids))

    rest, in_answer = text, False
    while rest:
        marker = instruction_marker if in_answer else response_marker
        cut = rest.find(marker) if marker else -1
        if cut < 0:
            add(rest, in_answer)
            break
        if in_answer:
            add(rest[:cut], True)
            add(marker, False)
        else:
            add(rest[:cut + len(marker)], False)  # the prompt, marker included: the answer starts after it
        rest, in_answer = rest[cut + len(marker):], not in_answer
    return Example(input_ids, labels)


def tokenize_messages(tokenizer, messages: list[dict], max_seq_length: int, train_on_responses_only: bool = True,
                      response_marker: str | None = None, instruction_marker: str | None = None,
                      index: int = 0) -> Example:
    text = render_chat(tokenizer, messages)
    if train_on_responses_only:
        ex = mask_prompt(tokenizer, text, response_marker, instruction_marker)
    else:
        ids = encode(tokenizer, text)
        ex = Example(ids, list(ids))
    ex = Example(ex.input_ids[:max_seq_length], ex.labels[:max_seq_length])
    if count_trained_tokens(ex.labels) == 0:
        raise DataError(f"example {index} has no answer tokens within max_seq_length={max_seq_length} (the prompt "
                        "alone fills it, or the answer is empty); raise max_seq_length or shorten the prompt")
    return ex


def build_examples(records: list[dict], tokenizer, max_seq_length: int, train_on_responses_only: bool = True,
                   response_marker: str | None = None, instruction_marker: str | None = None) -> list[Example]:
    """Alpaca or chat records → tokenized examples with the prompts masked."""
    if not records:
        raise DataError("the dataset is empty: an empty dataset cannot train anything")
    return [tokenize_messages(tokenizer, to_messages(r, i), max_seq_length, train_on_responses_only,
                              response_marker, instruction_marker, i) for i, r in enumerate(records)]


def chunk_text(tokenizer, text: str, chunk_size: int, stride: int) -> list[Example]:
    """Raw text → windows of ``chunk_size`` tokens starting every ``stride`` tokens (every token is trained on)."""
    if chunk_size < 2 or not 0 < stride <= chunk_size:
        raise DataError(f"need chunk_size >= 2 and 0 < stride <= chunk_size, got chunk_size={chunk_size}, "
                        f"stride={stride}")
    ids = encode(tokenizer, text)
    if len(ids) < 2:
        raise DataError("the raw text is empty (fewer than 2 tokens): nothing to train on")
    starts = range(0, max(len(ids) - chunk_size, 0) + 1, stride)
    chunks = [ids[s:s + chunk_size] for s in starts]
    if starts[-1] + chunk_size < len(ids):  # the tail the strides did not reach gets one last window
        chunks.append(ids[-chunk_size:])
    return [Example(c, list(c)) for c in chunks]


# --- batching ------------------------------------------------------------------------------------------------------
def collate(examples: list[Example], pad_id: int, pad_to: int | None = None):
    """Right-pad a list of examples into tensors: input_ids (B, T), labels (B, T) with -100 on padding,
    attention_mask (B, T) with 1 on real tokens."""
    import torch
    T = max(len(e) for e in examples) if pad_to is None else pad_to
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "labels": labels}
    if any(len(e) < T for e in examples):
        batch["attention_mask"] = mask
    return batch


def count_trained_tokens(labels) -> int:
    """How many labels carry loss after the one-token shift (the denominator of a correct mean): labels (B, T), or
    one example's list."""
    import torch

    from ..ops import next_token_targets
    return int((next_token_targets(torch.as_tensor(labels)) != IGNORE_INDEX).sum())

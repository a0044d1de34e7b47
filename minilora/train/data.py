"""Training data: from records on disk to (input_ids, labels) with the prompt masked.

`load_examples(source, tokenizer, max_seq_length)` is the one way in: a data file or folder, a `datasets.Dataset` or
any iterable of dicts (read in batches by `minilora.io.data_sources`), each record mapped by its columns
(`minilora.train.formats`: chat, ShareGPT, Alpaca, prompt/completion, pre-tokenized or raw text), tokenized with a
progress bar, truncated to ``max_seq_length``, and optionally cached (`minilora.train.example_cache`).
A raw text *file* is instead cut into windows of ``chunk_size`` tokens that overlap by ``chunk_size - stride``
(`chunk_text`).

Response-only training: the loss should teach the model to *answer*, not to predict the question it was given.
Every token of the rendered prompt gets the label -100 (ignored by cross-entropy) and only the answer tokens keep
their ids. We find the answers by a *response marker* — the text the template puts just before an assistant turn
(ChatML: ``"<|im_start|>assistant\\n"``) — and the prompt turns by an *instruction marker*
(``"<|im_start|>user\\n"``). If the marker never appears we refuse: silently masking every label would train on
nothing and still print a loss.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass

from ..io.chat_template import MAX_CHARS
from ..io.data_sources import open_records
from ..io.records import DataError
from .example_cache import cache_key, cache_path, read_cache, write_cache
from .formats import IGNORE_INDEX, detect_layout, pre_tokenized, record_chars, record_name, text_column, to_messages

__all__ = ["IGNORE_INDEX", "DataError", "Example", "load_examples", "read_records", "build_examples", "to_messages",
           "check_examples", "truncate", "chunk_text", "collate", "count_trained_tokens", "mask_prompt", "tokenize_messages"]

#: characters one record may hold: half the chat template's output limit, so a long record is refused here, by name,
#: and never reaches the template (whose limit is there to stop hostile templates)
MAX_RECORD_CHARS = MAX_CHARS // 2

#: markers for the templates minilora knows; others can be passed explicitly
KNOWN_MARKERS = {
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "alpaca": ("### Instruction:\n", "### Response:\n"),
}

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: int = 0  # tokens cut off the end to fit max_seq_length (0: the example is whole)

    def __len__(self):
        return len(self.input_ids)


def check_examples(examples, max_seq_length: int | None = None) -> None:
    """Refuse, naming the example, what would train wrongly: labels of another length than input_ids, ids that are
    not integers (a float id would be cast silently), and an example longer than ``max_seq_length`` (the model would
    train past its context; `load_examples` truncates, an Example made by hand is refused)."""
    for i, e in enumerate(examples):
        if not isinstance(e, Example):
            raise TypeError(f"train_dataset[{i}] is a {type(e).__name__}; it must be a list of minilora.train.Example "
                            "(use load_examples, build_examples or chunk_text)")
        if len(e.labels) != len(e.input_ids):
            raise DataError(f"example {i}: labels has {len(e.labels)} entries but input_ids {len(e.input_ids)}; "
                            "they must be the same length (one label per token, -100 where nothing is trained)")
        if max_seq_length is not None and len(e.input_ids) > max_seq_length:
            raise DataError(f"example {i} has {len(e.input_ids)} tokens, more than max_seq_length={max_seq_length}: "
                            "the model would be trained past its context. Truncate it (load_examples and "
                            "build_examples truncate to max_seq_length) or raise max_seq_length")
        for name, values in (("input_ids", e.input_ids), ("labels", e.labels)):
            if not set(map(type, values)) <= {int}:
                bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)), None)
                if bad is not None:
                    raise DataError(f"example {i}: {name} holds a {type(bad).__name__} ({bad!r}); token ids are "
                                    "integers")


# --- reading records ---------------------------------------------------------------------------------------------
def read_records(source, text_field: str | None = None) -> list[dict]:
    """Every record of ``source`` (a file or folder path, a `datasets.Dataset`, an iterable of dicts) as a list.
    With ``text_field``, every record must hold that column."""
    records = open_records(source)
    out = []
    for batch in records.batches():
        for where, record in batch:
            if text_field is not None:
                detect_layout(record, where, text_field)
            out.append(record)
    if not out:
        raise DataError(f"{records.name} holds no records: an empty dataset cannot train anything")
    return out


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
    ex = truncate(ex, max_seq_length)
    if count_trained_tokens(ex.labels) == 0:
        raise DataError(f"{record_name(index)} has no answer tokens within max_seq_length={max_seq_length} (the "
                        "prompt alone fills it, or the answer is empty); raise max_seq_length or shorten the prompt")
    return ex


def example_from_record(record: dict, tokenizer, max_seq_length: int, index=0, *, text_field: str | None = None,
                        train_on_responses_only: bool = True, response_marker: str | None = None,
                        instruction_marker: str | None = None) -> Example:
    """One record (any layout of `minilora.train.formats`) as a tokenized Example of at most max_seq_length tokens."""
    chars = record_chars(record, index)
    if chars > MAX_RECORD_CHARS:
        raise DataError(f"{record_name(index)} holds {chars:,} characters, more than the {MAX_RECORD_CHARS:,} one "
                        f"record may hold; split it into shorter records (only its first max_seq_length={max_seq_length} "
                        "tokens would be trained on)")
    layout = detect_layout(record, index, text_field)
    if layout in ("pre-tokenized", "raw text"):
        if layout == "pre-tokenized":
            ids, labels = pre_tokenized(record, index, len(tokenizer) if hasattr(tokenizer, "__len__") else None)
        else:
            ids = encode(tokenizer, text_column(record, text_field or "text", index))
            labels = ids
        ex = truncate(Example(ids, list(labels)), max_seq_length)
        if count_trained_tokens(ex.labels) == 0:
            raise DataError(f"{record_name(index)} has no tokens to train on within max_seq_length={max_seq_length} "
                            "(it is empty, a single token, or every label is -100)")
        return ex
    return tokenize_messages(tokenizer, to_messages(record, index), max_seq_length, train_on_responses_only,
                             response_marker, instruction_marker, index)


def build_examples(records: list[dict], tokenizer, max_seq_length: int, train_on_responses_only: bool = True,
                   response_marker: str | None = None, instruction_marker: str | None = None, *,
                   text_field: str | None = None) -> list[Example]:
    """Records already in memory → tokenized examples with the prompts masked (see `load_examples`)."""
    if not records:
        raise DataError("the dataset is empty: an empty dataset cannot train anything")
    return load_examples(records, tokenizer, max_seq_length, text_field=text_field, progress=False,
                         train_on_responses_only=train_on_responses_only, response_marker=response_marker,
                         instruction_marker=instruction_marker)


def load_examples(source, tokenizer, max_seq_length: int, *, text_field: str | None = None,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  train_on_responses_only: bool = True, response_marker: str | None = None,
                  instruction_marker: str | None = None) -> list[Example]:
    """Training examples from ``source``: a data file (.json, .jsonl, .parquet, .csv, .tsv), a folder of such
    shards or a ``datasets`` save_to_disk folder, a `datasets.Dataset`, or any iterable of dicts.

    Records are read in batches and tokenized with a progress bar (``progress``); each example is truncated to
    ``max_seq_length`` tokens. ``text_field`` names a raw text column to train on whole. With ``cache_dir``, the
    examples are cached there, keyed by a hash of the data, the tokenizer and these settings: a second call with
    the same data reads them back instead of tokenizing, and a changed file is never read from a stale cache."""
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 2:
        raise ValueError(f"max_seq_length must be an integer >= 2, got {max_seq_length!r}")
    records = open_records(source)
    settings = dict(max_seq_length=max_seq_length, text_field=text_field,
                    train_on_responses_only=train_on_responses_only, response_marker=response_marker,
                    instruction_marker=instruction_marker)
    stamp, path = records.stamp(), None
    if cache_dir is not None:
        key = cache_key(records.fingerprint(), tokenizer, settings)
        path = cache_path(cache_dir, key)
        cached = read_cache(path, key)
        if cached is not None:
            return _said_if_truncated([Example(*e) for e in cached], max_seq_length)
    from tqdm import tqdm  # the text bar everywhere (tqdm.auto warns in a notebook without ipywidgets)
    examples = []
    with tqdm(total=records.count, desc="tokenizing", unit=" records", disable=not progress) as bar:
        for batch in records.batches():
            examples.extend(example_from_record(record, tokenizer, max_seq_length, where, text_field=text_field,
                                                train_on_responses_only=train_on_responses_only,
                                                response_marker=response_marker,
                                                instruction_marker=instruction_marker) for where, record in batch)
            bar.update(len(batch))
    if not examples:
        raise DataError(f"{records.name} holds no records: an empty dataset cannot train anything")
    if path is not None:
        if records.stamp() != stamp:
            raise DataError(f"{records.name} changed while it was being read; nothing was cached. Run again once "
                            "it is complete")
        write_cache(path, key, [(e.input_ids, e.labels, e.truncated) for e in examples])
    return _said_if_truncated(examples, max_seq_length)


def truncate(example: Example, max_seq_length: int) -> Example:
    """The first ``max_seq_length`` tokens of ``example``, with how many were cut off."""
    cut = len(example.input_ids) - max_seq_length
    if cut <= 0:
        return example
    return Example(example.input_ids[:max_seq_length], example.labels[:max_seq_length], example.truncated + cut)


def _said_if_truncated(examples: list[Example], max_seq_length: int) -> list[Example]:
    cut = [e.truncated for e in examples if e.truncated]
    if cut:
        import warnings
        warnings.warn(f"{len(cut)} of {len(examples)} examples were longer than max_seq_length={max_seq_length} and "
                      f"were cut to it (up to {max(cut)} tokens each were dropped); raise max_seq_length to keep "
                      "them whole", stacklevel=3)
    return examples


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

"""Packing: put several short examples into one row so no compute is spent on padding.

Rows are filled up to ``max_seq_length`` by best-fit decreasing (longest example first, each into the fullest row it
still fits): on instruction data nearly every row ends up full, so a packed micro-batch is (B, max_seq_length) of
real tokens — one fixed shape, which also lets the compiled attention kernel be built once.

Three things keep packed examples independent, exactly as if each ran alone:
- ``segment_ids`` (B, T) give every token the index of its example in the row (padding: -1); the model's attention
  lets a token see only tokens of its own example (`LlamaForCausalLM.packed_mask`) — no (B, 1, T, T) mask exists;
- position ids restart at 0 for every example (RoPE sees the same positions as in an unpacked row);
- the first token of each example has no previous token of its own, so the label that would ask the previous
  example's last token to predict it is set to -100: no loss crosses a boundary.
"""
from __future__ import annotations

import bisect

import torch

from .data import IGNORE_INDEX, Example

PADDING_SEGMENT = -1


def pack_examples(examples: list[Example], max_seq_length: int) -> list[list[Example]]:
    """Best-fit decreasing: longest first, each example into the row with the least room that still holds it.

    Deterministic for a given input order (ties keep it), so the trainer shuffles before packing."""
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length={max_seq_length}: need at least 1 token per row")
    for e in examples:
        if len(e) > max_seq_length:
            raise ValueError(f"an example of {len(e)} tokens is longer than max_seq_length={max_seq_length}; "
                             "truncate it first")
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    rows: list[list[Example]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted: the best fit is the first with enough
    for i in order:
        n = len(examples[i])
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            rows.append([examples[i]])
            free, row = max_seq_length - n, len(rows) - 1
        else:
            free, row = room.pop(at)
            rows[row].append(examples[i])
            free -= n
        if free > 0:
            bisect.insort(room, (free, row))
    return rows


def collate_packed(rows: list[list[Example]], pad_id: int, pad_to: int | None = None) -> dict:
    """Packed rows → input_ids, labels, position_ids, segment_ids, all (B, T) integers.

    T is the longest row, or ``pad_to`` (the trainer passes max_seq_length, so every micro-batch has one shape)."""
    T = max(sum(len(e) for e in row) for row in rows)
    if pad_to is not None:
        if pad_to < T:
            raise ValueError(f"a packed row holds {T} tokens but pad_to={pad_to}: pack with max_seq_length <= pad_to")
        T = pad_to
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), PADDING_SEGMENT, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for k, e in enumerate(row):
            n = len(e)
            ids[b, start:start + n] = torch.tensor(e.input_ids)
            labels[b, start:start + n] = torch.tensor(e.labels)
            labels[b, start] = IGNORE_INDEX  # never predict an example's first token from the previous one
            pos[b, start:start + n] = torch.arange(n)
            seg[b, start:start + n] = k
            start += n
        pos[b, start:] = torch.arange(T - start)  # padding: one more segment, its labels carry no loss
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "segment_ids": seg}


def real_tokens(batch: dict) -> int:
    """Tokens of a collated batch that belong to an example (not padding)."""
    if "segment_ids" in batch:
        return int((batch["segment_ids"] != PADDING_SEGMENT).sum())
    if "attention_mask" in batch and batch["attention_mask"].dim() == 2:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()

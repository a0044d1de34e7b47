"""Packing: put several short examples into one row so no compute is spent on padding.

Two things keep packed examples independent, exactly as if each ran alone:
- position ids restart at 0 for every example (RoPE sees the same positions as in an unpacked row);
- a block-diagonal causal mask (B, 1, T, T): token i may attend to token j only if both belong to the same example
  and j <= i. The model takes such a 4-D bool mask as ``attention_mask``.
The first token of each example has no previous token of its own, so the label that would ask the previous example's
last token to predict it is set to -100.
"""
from __future__ import annotations

import torch

from .data import IGNORE_INDEX, Example


def pack_examples(examples: list[Example], max_seq_length: int) -> list[list[Example]]:
    """Greedy first-fit in the given order: a new row starts when the next example does not fit."""
    rows, current, used = [], [], 0
    for e in examples:
        if len(e) > max_seq_length:
            raise ValueError(f"an example of {len(e)} tokens is longer than max_seq_length={max_seq_length}; "
                             "truncate it first")
        if used + len(e) > max_seq_length and current:
            rows.append(current)
            current, used = [], 0
        current.append(e)
        used += len(e)
    if current:
        rows.append(current)
    return rows


def collate_packed(rows: list[list[Example]], pad_id: int) -> dict:
    """Packed rows → input_ids, labels, position_ids (B, T) and attention_mask (B, 1, T, T) bool."""
    T = max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # which example each token belongs to; -1 = padding
    for b, row in enumerate(rows):
        start = 0
        for k, e in enumerate(row):
            n = len(e)
            ids[b, start:start + n] = torch.tensor(e.input_ids)
            labels[b, start:start + n] = torch.tensor(e.labels)
            if start > 0:
                labels[b, start] = IGNORE_INDEX  # never predict an example's first token from the previous one
            pos[b, start:start + n] = torch.arange(n)
            seg[b, start:start + n] = k
            start += n
        pos[b, start:] = torch.arange(T - start)  # padding: harmless positions, masked out anyway
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    diag = torch.eye(T, dtype=torch.bool)
    mask = (same & causal) | diag  # a padding token sees itself, so no row of the softmax is empty
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "attention_mask": mask[:, None]}

"""Attention over packed rows: several examples share one row and each attends only within itself.

Shapes: q (B, nh, T, hd), k and v (B, nkv, T, hd), segment_ids (B, T) ints — one id per example, the same id on
every token of one example (padding at the end of a row is one more segment; its labels carry no loss). Inside a
segment the model's own rule applies: ``allowed(q_idx, k_idx)`` — causal for Llama, causal and within the sliding
window for Mistral. Row indices work for that rule because inside one segment they differ from the example's own
positions by a constant.

Two exact ways to compute it, and never a dense (B, 1, T, T) mask:
- `segment_attention_reference`: split each row at its segment boundaries and run SDPA on every example alone
  (the plain-PyTorch reference; the CPU path). Cost grows with the squares of the examples' lengths, not of T.
- `segment_attention_flex`: FlexAttention with a block mask built from ``same segment & allowed``, compiled by
  torch.compile into one fused kernel (the GPU path). The block mask records which (128 × 128) tiles of the
  score matrix are empty, full or partial: empty tiles — every pair of different examples — are skipped, so the
  work also grows with the squares of the examples' lengths. One block mask serves every layer of a forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

Rule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PackedSegments:
    """What the attention of one packed forward needs: the ids, the model's rule, and (GPU path) the block mask."""
    segment_ids: torch.Tensor  # (B, T) integer
    allowed: Rule
    block_mask: object | None = None  # a flex_attention BlockMask, built once per forward on the fast path


def check_segment_ids(segment_ids: torch.Tensor, batch: int, length: int) -> None:
    if segment_ids.dim() != 2 or segment_ids.dtype not in (torch.int64, torch.int32) or \
            tuple(segment_ids.shape) != (batch, length):
        raise ValueError(f"segment_ids must be an integer tensor of shape (batch, seq) = ({batch}, {length}), got "
                         f"{segment_ids.dtype} {tuple(segment_ids.shape)}: give every token the id of its example")


def segment_runs(ids: list[int]) -> list[tuple[int, int]]:
    """[(start, end), ...] of the runs of equal ids in one row: one run per packed example."""
    runs, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            runs.append((start, i))
            start = i
    return runs


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) that restart at 0 where a new segment starts (computed on the device, no host sync)."""
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device).expand(B, T)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # start of the current segment
    return idx - first


def segment_attention_reference(q, k, v, segments: PackedSegments) -> torch.Tensor:
    """Every example alone through SDPA with its own (n, n) mask from the model's rule; the rows put back together."""
    B, nh, T, hd = q.shape
    n_rep = nh // k.shape[1]
    if n_rep > 1:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    rows = []
    for b, ids in enumerate(segments.segment_ids.tolist()):  # on a GPU this reads the ids back: reference only
        pieces = []
        for start, end in segment_runs(ids):
            pos = torch.arange(end - start, device=q.device)
            mask = segments.allowed(pos[:, None], pos[None, :])  # (n, n) bool
            pieces.append(F.scaled_dot_product_attention(q[b:b + 1, :, start:end], k[b:b + 1, :, start:end],
                                                         v[b:b + 1, :, start:end], attn_mask=mask))
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0)  # (B, nh, T, hd)


def build_block_mask(segments: PackedSegments) -> object:
    """The flex_attention BlockMask of ``same segment & allowed`` for these rows."""
    from torch.nn.attention.flex_attention import create_block_mask
    ids, allowed = segments.segment_ids, segments.allowed

    def same_example(b, h, q_idx, kv_idx):
        return (ids[b, q_idx] == ids[b, kv_idx]) & allowed(q_idx, kv_idx)

    B, T = ids.shape
    return create_block_mask(same_example, B, None, T, T, device=ids.device)


_compiled_flex = None


def _flex():
    """flex_attention compiled once per process (uncompiled it materializes the scores: correct, but slow)."""
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def segment_attention_flex(q, k, v, segments: PackedSegments, compiled: bool = True) -> torch.Tensor:
    """The same attention as the reference through FlexAttention (GQA in the kernel: k, v keep their nkv heads)."""
    if segments.block_mask is None:
        segments.block_mask = build_block_mask(segments)
    if compiled:
        flex = _flex()
    else:
        from torch.nn.attention.flex_attention import flex_attention as flex
    return flex(q, k, v, block_mask=segments.block_mask, enable_gqa=k.shape[1] != q.shape[1])

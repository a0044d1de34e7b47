"""Learning-rate schedules with warm-up, as a multiplier of the peak learning rate for optimizer step ``step``.

Warm-up ramps linearly from lr/warmup up to lr over the first ``warmup_steps`` steps (large early updates on a freshly
initialized adapter are the usual cause of a loss spike); then "linear" decays to 0 at ``max_steps``, "cosine"
follows half a cosine wave down to 0, and "constant" stays at the peak.
"""
from __future__ import annotations

import math

SCHEDULES = ("linear", "cosine", "constant")


def lr_multiplier(step: int, max_steps: int, warmup_steps: int = 0, kind: str = "linear") -> float:
    """Multiplier in [0, 1] for the update made at optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr_scheduler_type={kind!r}: choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))

"""What a training step checks besides the loss itself: token ids before a batch travels, and — when the loss turns
NaN — whether the model's frozen weights were broken before any update.

Token ids are checked on the host, where the trainer builds each micro-batch anyway: reading CPU tensors costs no
host-device sync, so the GPU step keeps its one read per step (`Trainer.training_step`) and an out-of-range label or
input id is refused with its position before the forward runs, on every device. (On a GPU an out-of-range input id
would otherwise end the process with a device-side assert, and a label would give a NaN loss.)
"""
from __future__ import annotations

from .. import ops
from ..finite import first_nonfinite
from .arguments import TrainingError
from .data import IGNORE_INDEX


def check_batch_ids(batches: list[dict], model, step: int) -> None:
    """Refuse input ids and labels outside the model's vocabulary (labels may also be IGNORE_INDEX)."""
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is None:
        return
    for j, b in enumerate(batches):
        try:
            ops.check_token_ids(b["input_ids"], vocab_size, "input_ids")
            ops.check_token_ids(b["labels"], vocab_size, "labels", ignore_index=IGNORE_INDEX)
        except ValueError as e:
            raise TrainingError(f"step {step}, micro-batch {j + 1}: {e}") from None


def broken_frozen_weight(model) -> str | None:
    """A sentence naming the first frozen parameter or buffer holding NaN/inf, or None. Frozen weights are never
    updated, so a NaN there was in the model before training — not the learning rate's doing."""
    frozen = ((n, p) for n, p in model.named_parameters() if not p.requires_grad)
    found = first_nonfinite([*frozen, *model.named_buffers()])
    if found is None:
        return None
    name, index, value = found
    return (f"the model's frozen weight {name!r} holds {value} (at flat index {index:,}): the base model was broken "
            "before training, not by the learning rate. Reload it (minilora refuses such files on load) or find what "
            "wrote into it")

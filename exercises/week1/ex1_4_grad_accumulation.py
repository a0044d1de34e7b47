"""Exercise 1.4 — gradient accumulation with the right normalization.

Read lessons/week1_big_picture.py first (the gradient-accumulation cells) and minilora/train/trainer.py's
docstring. Replace each `raise NotImplementedError(...)` with your code, then run `pytest -m ex1_4` until it is green.

Shapes: logits (B, T, V), labels (B, T) with -100 on tokens that carry no loss. Token t predicts token t + 1, so
compare logits[:, :-1] with labels[:, 1:].
"""
import torch

IGNORE_INDEX = -100


def count_trained_tokens(labels: torch.Tensor) -> int:
    """How many labels carry loss after the shift: the number of entries of labels[:, 1:] that are not -100."""
    raise NotImplementedError("Exercise 1.4: count_trained_tokens — see lessons/week1_big_picture.py")


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The SUM (not the mean) of the cross-entropy of every trained token of one micro-batch (a 0-d tensor).

    Hint: torch.nn.functional.cross_entropy(..., ignore_index=-100, reduction="sum") on the shifted, flattened
    logits (N, V) and labels (N,).
    """
    raise NotImplementedError("Exercise 1.4: summed_token_loss — see lessons/week1_big_picture.py")


def accumulation_losses(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """One loss per micro-batch (logits, labels), such that calling .backward() on each and adding the gradients
    gives exactly the gradient of ONE batch holding all of them: each micro-batch's summed loss divided by the
    number of trained tokens of ALL micro-batches together (not by its own count — that is a mean of means).
    """
    raise NotImplementedError("Exercise 1.4: accumulation_losses — see lessons/week1_big_picture.py")

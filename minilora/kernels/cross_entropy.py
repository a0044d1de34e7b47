"""Cross-entropy over a large vocabulary.

Shapes: logits (N, V), labels (N,) with `ignore_index` marking tokens that carry no loss.
The loss is a *sum* over the non-ignored tokens divided by `num_items` (default: their count). Passing the token
count of a whole accumulated batch makes gradient accumulation exact (a total over tokens, not a mean of means).
Optional `logit_scale` multiplies the logits and `softcap` applies $c \\tanh(z / c)$ before the softmax.
"""
import torch
import torch.nn.functional as F


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                            num_items: int | float | torch.Tensor | None = None,
                            logit_scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    z = logits.float()  # the reference upcasts the whole (N, V) block: the memory the kernel avoids
    if logit_scale is not None:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    total = F.cross_entropy(z, labels, ignore_index=ignore_index, reduction="sum")
    if num_items is None:
        num_items = (labels != ignore_index).sum().clamp(min=1)
    return total / num_items

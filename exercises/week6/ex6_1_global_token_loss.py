"""Exercise 6.1 — the loss each rank backpropagates, so N ranks train exactly like one process.

Read lessons/week6_beyond_one_gpu.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex6_1` until it is green. The tests build per-token losses from one parameter, split them unevenly over
ranks, and compare the gradient your per-rank losses give (averaged over ranks, as DDP does) with one process's.
"""
import torch


def global_mean(token_losses: list[torch.Tensor]) -> torch.Tensor:
    """The one-process loss: the mean over EVERY token of every rank (token_losses[r] is rank r's 1-D tensor of
    per-token losses; ranks may hold different numbers of tokens, a rank may hold none)."""
    raise NotImplementedError("Exercise 6.1: global_mean — see lessons/week6_beyond_one_gpu.py")


def rank_losses(token_losses: list[torch.Tensor]) -> list[torch.Tensor]:
    """The scalar loss each rank backpropagates. DDP AVERAGES the ranks' gradients (sums them, then divides by the
    number of ranks W), and each rank only knows its own tokens plus the all-reduced total count N. Return, for
    rank r, the loss whose gradient, averaged over the W ranks, is the gradient of `global_mean(token_losses)`.
    Every rank's loss must be a finite number, also on a rank that holds no tokens (it still joins the all-reduce).
    (Hint: what must rank r's tokens be divided by, and what undoes DDP's division by W?)"""
    raise NotImplementedError("Exercise 6.1: rank_losses — see lessons/week6_beyond_one_gpu.py")

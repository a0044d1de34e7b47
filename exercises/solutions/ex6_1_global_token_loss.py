"""Exercise 6.1 — reference solution."""
import torch


def global_mean(token_losses):
    return torch.cat(token_losses).sum() / sum(t.numel() for t in token_losses)


def rank_losses(token_losses):
    n_global = sum(t.numel() for t in token_losses)  # what the all-reduce of the counts gives every rank
    world = len(token_losses)
    return [world * t.sum() / n_global for t in token_losses]

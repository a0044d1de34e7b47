"""Exercise 3.3 — the online log-sum-exp: a softmax denominator in one pass over the vocabulary.

Read lessons/week3_cross_entropy.py first (section 2 derives the update rule). Replace each
`raise NotImplementedError(...)` with your code, then run `pytest -m ex3_3` until it is green. Plain PyTorch; do not
call torch.logsumexp, torch.softmax or torch.max over a whole row — the point is to see each number only once,
block by block, as the cross-entropy kernel does.

lse(z) = log(sum_j exp(z_j)). Computed naively, exp overflows for z_j > 88 in float32. The stable form is
m + log(sum_j exp(z_j - m)) with m = max_j z_j — but that needs the max before the sum (two passes). The online
form keeps, per row, a running max m and a running sum s = sum over the columns seen so far of exp(z_j - m); when a
new block raises the max to m_new, the old sum is rescaled by exp(m - m_new).
"""
import torch


def lse_update(m: torch.Tensor, s: torch.Tensor, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: fold a block of columns into the running state.

    m, s: (N,) float — the running max and the running sum of exp(z - m) over the columns seen so far (before the
    first block: m = -inf, s = 0). block: (N, b) — the next b columns of each row. Return (m_new, s_new).
    Careful: a row whose values are all -inf so far has m = -inf, and exp(-inf - (-inf)) is nan — treat that
    rescaling factor as 0 (there is nothing to rescale).
    """
    raise NotImplementedError("Exercise 3.3: lse_update — see lessons/week3_cross_entropy.py")


def online_logsumexp(z: torch.Tensor, block_size: int) -> torch.Tensor:
    """log-sum-exp of each row of z (N, V), reading z in blocks of `block_size` columns with `lse_update`.

    Returns (N,). The last block may be narrower than block_size.
    """
    raise NotImplementedError("Exercise 3.3: online_logsumexp — see lessons/week3_cross_entropy.py")


def combine_chunks(lse_parts: torch.Tensor) -> torch.Tensor:
    """Rows longer than one chunk are split; each chunk k gives lse_k = log(sum over its columns of exp(z)).

    lse_parts: (N, K). Return the log-sum-exp of each whole row, (N,), using the same max trick (no overflow).
    """
    raise NotImplementedError("Exercise 3.3: combine_chunks — see lessons/week3_cross_entropy.py")

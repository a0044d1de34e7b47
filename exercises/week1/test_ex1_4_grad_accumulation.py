import pytest
import torch
import torch.nn.functional as F

from exercises.conftest import exercise

pytestmark = pytest.mark.ex1_4
ex = exercise("ex1_4_grad_accumulation")


def batch(B, T, V, n_masked, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :n_masked] = -100
    return logits, labels


def test_count_and_sum():
    logits, labels = batch(2, 6, 5, 2, 0)
    assert ex.count_trained_tokens(labels) == 2 * 4  # 5 shifted positions per row, the first one of them masked
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(ex.summed_token_loss(logits, labels), want)


def test_accumulated_gradient_equals_one_big_batch():
    """Micro-batches of uneven lengths and masks; compare with one padded batch of all of them."""
    V, W = 7, torch.randn(4, 7, requires_grad=True)
    shapes = [(2, 9, 1), (1, 4, 2), (3, 6, 4)]
    hidden = [torch.randn(B, T, 4, generator=torch.Generator().manual_seed(i)) for i, (B, T, _) in enumerate(shapes)]
    labels = [batch(B, T, V, m, 10 + i)[1] for i, (B, T, m) in enumerate(shapes)]
    losses = ex.accumulation_losses([(h @ W, l) for h, l in zip(hidden, labels)])
    grad = torch.autograd.grad(sum(losses), W)[0]
    # one batch: pad every row to 9 tokens with ignored labels
    rows_h, rows_l = [], []
    for h, l in zip(hidden, labels):
        pad = 9 - h.shape[1]
        rows_h.append(F.pad(h, (0, 0, 0, pad)))
        rows_l.append(F.pad(l, (0, pad), value=-100))
    H, L = torch.cat(rows_h), torch.cat(rows_l)
    big = F.cross_entropy((H @ W)[:, :-1].reshape(-1, V), L[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(sum(losses).detach(), big.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.autograd.grad(big, W)[0], rtol=1e-5, atol=1e-6)


def test_it_is_not_a_mean_of_means():
    a, b = batch(1, 12, 5, 0, 1), batch(1, 3, 5, 0, 2)
    losses = ex.accumulation_losses([a, b])
    mean_of_means = (ex.summed_token_loss(*a) / 11 + ex.summed_token_loss(*b) / 2) / 2
    assert abs(float(sum(losses)) - float(mean_of_means)) > 1e-3

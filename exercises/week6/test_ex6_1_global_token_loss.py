import pytest
import torch

from exercises.conftest import exercise

pytestmark = pytest.mark.ex6_1
ex = exercise("ex6_1_global_token_loss")


def per_token_losses(w, sizes, seed=0):
    """Rank r gets sizes[r] tokens; token t's loss is a smooth function of the parameter w."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(n, 3, generator=g) for n in sizes]
    return [((xi @ w) ** 2 + xi[:, 0]).float() for xi in x]


@pytest.mark.parametrize("sizes", [[3, 7], [5, 5], [1, 8, 2], [4, 0, 6, 3]])
def test_global_mean_is_the_one_process_loss(sizes):
    w = torch.randn(3, generator=torch.Generator().manual_seed(1))
    losses = per_token_losses(w, sizes)
    assert torch.allclose(ex.global_mean(losses), torch.cat(losses).mean(), rtol=1e-6)


@pytest.mark.parametrize("sizes", [[3, 7], [5, 5], [1, 8, 2], [4, 0, 6, 3]])
def test_ranks_averaged_like_ddp_give_the_one_process_gradient(sizes):
    w = torch.randn(3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    one = torch.autograd.grad(torch.cat(per_token_losses(w, sizes)).mean(), w)[0]
    per_rank = ex.rank_losses(per_token_losses(w, sizes))
    assert len(per_rank) == len(sizes) and all(loss.dim() == 0 for loss in per_rank)
    grads = [torch.autograd.grad(loss, w)[0] for loss in per_rank]
    ddp = torch.stack(grads).mean(0)  # what DDP's all-reduce leaves on every rank
    torch.testing.assert_close(ddp, one, rtol=1e-5, atol=1e-6)


def test_the_mean_of_means_is_not_it():
    w = torch.randn(3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    sizes = [1, 9]
    one = torch.autograd.grad(torch.cat(per_token_losses(w, sizes)).mean(), w)[0]
    mean_of_means = torch.stack([t.mean() for t in per_token_losses(w, sizes)]).mean()
    wrong = torch.autograd.grad(mean_of_means, w)[0]
    right = torch.stack([torch.autograd.grad(loss, w)[0] for loss in ex.rank_losses(per_token_losses(w, sizes))])
    assert not torch.allclose(wrong, one, rtol=1e-3)
    torch.testing.assert_close(right.mean(0), one, rtol=1e-5, atol=1e-6)

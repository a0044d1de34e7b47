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


def check_rank_losses(per_rank, losses):
    """Every rank's loss is finite and has the value W · (its tokens' sum) / N; else name the likely mistake."""
    n, world = sum(t.numel() for t in losses), len(losses)
    for r, (loss, t) in enumerate(zip(per_rank, losses)):
        if not torch.isfinite(loss):
            empty = (f"rank {r} holds no tokens and its loss is {loss.item()}: the mean of an empty tensor is 0/0 — "
                     "build the loss from the rank's SUM (0 for no tokens) divided by the global count N, so every "
                     "rank backpropagates a finite loss") if t.numel() == 0 else f"rank {r}'s loss is {loss.item()}"
            pytest.fail(empty)
    mistakes = [  # (hint, the loss each rank would return with that mistake)
        ("each rank divides by its OWN token count (a mean of means): a rank of 1 token then weighs as much as a "
         "rank of 8 — divide by the global count N (the all-reduced total) instead", lambda t: t.sum() / t.numel()),
        ("each rank divides by N but DDP then averages (divides by W) again: multiply by the number of ranks W to "
         "undo it", lambda t: t.sum() / n),
        ("the rank's sum is never divided: divide by the global count N and multiply by W", lambda t: t.sum()),
    ]
    want = [world * t.sum() / n for t in losses]
    got = torch.stack([loss.detach() for loss in per_rank])
    if torch.allclose(got, torch.stack(want).detach(), rtol=1e-5, atol=1e-6):
        return
    for hint, wrong in mistakes:
        values = torch.stack([wrong(t).detach() if t.numel() else torch.zeros(()) for t in losses])
        if torch.allclose(got, values, rtol=1e-5, atol=1e-6):
            pytest.fail(f"rank losses {got.tolist()}: {hint}")
    pytest.fail(f"rank losses {got.tolist()}, expected {[round(x.item(), 6) for x in want]} (W · the rank's sum / N "
                f"with W = {world} ranks and N = {n} tokens in all)")


@pytest.mark.parametrize("sizes", [[3, 7], [5, 5], [1, 8, 2], [4, 0, 6, 3]])
def test_global_mean_is_the_one_process_loss(sizes):
    w = torch.randn(3, generator=torch.Generator().manual_seed(1))
    losses = per_token_losses(w, sizes)
    got, want = ex.global_mean(losses), torch.cat(losses).mean()
    assert torch.isfinite(got), (f"global_mean is {got.item()} for ranks holding {sizes} tokens: a rank with no "
                                 "tokens has no mean (0/0) — sum every token and divide by the total count")
    if not torch.allclose(got, want, rtol=1e-6):
        means = torch.stack([t.mean() for t in losses if t.numel()])
        hint = ("that is the mean of the ranks' means, which weighs a rank of 1 token like a rank of 8 — sum every "
                "token, then divide by the total count" if torch.allclose(got, means.mean(), rtol=1e-6)
                else "the one-process loss is the sum of every token's loss divided by the number of tokens")
        pytest.fail(f"global_mean gives {got.item():.6g}, the mean over all {sum(sizes)} tokens is "
                    f"{want.item():.6g}: {hint}")


@pytest.mark.parametrize("sizes", [[3, 7], [5, 5], [1, 8, 2], [4, 0, 6, 3]])
def test_ranks_averaged_like_ddp_give_the_one_process_gradient(sizes):
    w = torch.randn(3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    one = torch.autograd.grad(torch.cat(per_token_losses(w, sizes)).mean(), w)[0]
    losses = per_token_losses(w, sizes)
    per_rank = ex.rank_losses(losses)
    assert len(per_rank) == len(sizes) and all(loss.dim() == 0 for loss in per_rank), \
        f"return one scalar (0-d) loss per rank: {len(sizes)} ranks here"
    check_rank_losses(per_rank, losses)
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

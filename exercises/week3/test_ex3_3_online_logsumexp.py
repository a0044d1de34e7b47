import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex3_3
ex = exercise("ex3_3_online_logsumexp")


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 5), V=st.integers(1, 300), block=st.integers(1, 64), spread=st.floats(0.1, 50))
def test_matches_logsumexp_for_any_block_size(N, V, block, spread):
    z = torch.randn(N, V, generator=torch.Generator().manual_seed(V * 7 + block)) * spread
    torch.testing.assert_close(ex.online_logsumexp(z, block), torch.logsumexp(z, dim=1), rtol=1e-5, atol=1e-5)


def test_no_overflow_with_large_logits():
    z = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    out = ex.online_logsumexp(z, 2)
    assert torch.isfinite(out).all(), "exp(1000) overflows: subtract the running max before exp"
    torch.testing.assert_close(out, torch.logsumexp(z, dim=1))


def test_masked_columns_at_minus_infinity():
    z = torch.tensor([[float("-inf"), float("-inf"), 2.0, 3.0, float("-inf")]])
    for block in (1, 2, 5):  # the first block of this row is all -inf
        torch.testing.assert_close(ex.online_logsumexp(z, block), torch.logsumexp(z, dim=1))


def test_one_update_step_rescales_the_old_sum():
    m, s = torch.tensor([2.0]), torch.tensor([1.5])  # columns seen so far: sum exp(z - 2) = 1.5
    m_new, s_new = ex.lse_update(m, s, torch.tensor([[5.0, 1.0]]))
    assert m_new.item() == 5.0
    expected = 1.5 * torch.exp(torch.tensor(-3.0)) + torch.exp(torch.tensor(0.0)) + torch.exp(torch.tensor(-4.0))
    torch.testing.assert_close(s_new, expected.reshape(1))


def test_combine_chunks_equals_whole_row():
    z = torch.randn(3, 100) * 30
    parts = torch.stack([torch.logsumexp(z[:, :40], 1), torch.logsumexp(z[:, 40:], 1)], dim=1)
    torch.testing.assert_close(ex.combine_chunks(parts), torch.logsumexp(z, dim=1))
    big = torch.tensor([[800.0, 801.0]])
    assert torch.isfinite(ex.combine_chunks(big)).all()


def test_reads_each_row_block_by_block():
    """online_logsumexp folds the row in with lse_update, one block of at most block_size columns at a time, and
    never reduces a whole row at once (no torch.logsumexp / softmax / max over all V columns)."""
    from exercises.checks import record_torch_calls
    N, V, block = 3, 50, 8
    z = torch.randn(N, V, generator=torch.Generator().manual_seed(0)) * 5
    widths, update = [], ex.lse_update

    def spy(m, s, blk):
        widths.append(blk.shape[1])
        return update(m, s, blk)
    ex.lse_update = spy  # online_logsumexp looks lse_update up in its module when it runs
    try:
        with record_torch_calls() as calls:
            out = ex.online_logsumexp(z, block)
    finally:
        ex.lse_update = update
    torch.testing.assert_close(out, torch.logsumexp(z, dim=1))
    assert widths == [8] * 6 + [2], f"lse_update saw blocks of widths {widths}: expected 8, 8, 8, 8, 8, 8, 2"
    whole_row = sorted({name for name, args, _ in calls
                        if name in ("logsumexp", "softmax", "log_softmax", "max", "amax", "sort", "topk")
                        and args and isinstance(args[0], torch.Tensor) and args[0].shape[-1] == V})
    assert not whole_row, f"{', '.join(whole_row)} ran over a whole row of {V} columns: see each block only once"

import pytest
import torch

from exercises.conftest import exercise
from minilora.quant import NF4_CODEBOOK

pytestmark = pytest.mark.ex3_4
ex = exercise("ex3_4_nf4_codebook")


def test_shape_order_and_range():
    levels = ex.nf4_levels()
    assert levels.shape == (16,) and levels.dtype == torch.float64
    assert torch.all(levels[1:] > levels[:-1]), "sort the levels ascending"
    assert levels[0] == -1 and levels[-1] == 1, "normalise by the largest magnitude"


def test_asymmetric_with_an_exact_zero():
    levels = ex.nf4_levels()
    assert (levels == 0).sum() == 1
    assert (levels < 0).sum() == 7 and (levels > 0).sum() == 8


def test_matches_the_published_table():
    torch.testing.assert_close(ex.nf4_levels().float(), NF4_CODEBOOK, rtol=0, atol=2e-7)

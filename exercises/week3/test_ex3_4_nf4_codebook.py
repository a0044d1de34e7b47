import pytest
import torch

from exercises.conftest import exercise
from minilora.quant import NF4_CODEBOOK

pytestmark = pytest.mark.ex3_4
ex = exercise("ex3_4_nf4_codebook")

# Each check below names the mistake it detects, in the order a wrong answer is most easily diagnosed.


def test_sixteen_float64_levels():
    levels = ex.nf4_levels()
    assert levels.shape == (16,), (
        f"got {tuple(levels.shape)}: NF4 has 16 levels = 8 positive + 7 negative + one 0. From each linspace keep "
        f"all but its LAST value (p = 0.5, where Φ⁻¹ is 0): the one 0 is added on its own")
    assert levels.dtype == torch.float64, f"got {levels.dtype}: compute and return float64 (the table's digits)"


def test_one_exact_zero_then_eight_positive_and_seven_negative():
    levels = ex.nf4_levels()
    zeros, negative, positive = int((levels == 0).sum()), int((levels < 0).sum()), int((levels > 0).sum())
    assert negative > 0, "no negative levels: the 7 negative levels are −Φ⁻¹(p) (mind the minus sign)"
    assert zeros == 1, (
        f"{zeros} levels are 0: Φ⁻¹(0.5) = 0, so a linspace that still holds p = 0.5 adds another 0 — keep the "
        f"first 8 of 9 (and 7 of 8) values counting from offset DOWN to 0.5, and add the single 0 yourself")
    assert (negative, positive) == (7, 8), (
        f"{negative} negative and {positive} positive levels: NF4 gives the positive side one more level "
        f"(8 of 9 values for the positives, 7 of 8 for the negatives)")


def test_sorted_ascending_and_distinct():
    levels = ex.nf4_levels()
    assert torch.equal(levels, levels.sort().values), "sort the levels ascending (torch.sort)"
    nonzero = levels[levels != 0]
    repeated = nonzero.numel() - nonzero.unique().numel()
    assert repeated == 0, (
        f"{repeated} nonzero level(s) appear twice: the negative half mirrors the positive one (−Φ⁻¹(p), "
        f"a minus sign)")


def test_largest_magnitude_is_one():
    levels = ex.nf4_levels()
    assert levels.abs().max() == 1, (
        f"the largest |level| is {float(levels.abs().max()):.6g}: divide everything by the largest magnitude")


def test_both_ends_come_from_the_offset():
    levels = ex.nf4_levels()
    assert levels.min() < 0, "no negative end: the negative levels are −Φ⁻¹(p) (mind the minus sign)"
    assert levels.min() == -levels.max(), (
        f"the ends are {float(levels.min()):.6g} and {float(levels.max()):.6g}: both should come from p = offset "
        f"(−Φ⁻¹(offset) and Φ⁻¹(offset), equal magnitudes) — start BOTH linspaces at offset and drop their last "
        f"value (0.5), not their first")


def test_matches_the_published_table():
    levels = ex.nf4_levels()
    shaped = (levels.shape == (16,) and torch.equal(levels, levels.sort().values) and int((levels == 0).sum()) == 1
              and int((levels < 0).sum()) == 7 and levels.min() == -1 and levels.max() == 1)
    hint = ("16 sorted levels from -1 to 1 with one 0, but not NF4's values: check" if shaped
            else "not NF4's values: fix what the other failing checks of this exercise say first, then check")
    assert levels.shape == (16,) and torch.allclose(levels.float(), NF4_CODEBOOK, rtol=0, atol=2e-7), (
        f"{hint} offset = ((1 − 1/30) + (1 − 1/32)) / 2 and that the "
        f"p values are EVENLY spaced from offset to 0.5 (torch.linspace(offset, 0.5, 9) and (offset, 0.5, 8))\n"
        f"yours:    {[round(v, 4) for v in levels.tolist()]}\nexpected: {[round(v, 4) for v in NF4_CODEBOOK.tolist()]}")

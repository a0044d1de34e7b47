import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.quant.dynamic8 import dynamic_map, quantize_blockwise_8bit

pytestmark = pytest.mark.ex4_3
ex = exercise("ex4_3_dynamic_map")


@pytest.mark.parametrize("signed", [True, False])
def test_the_map_is_the_library_map_and_bitsandbytes_map(signed):
    ours = ex.dynamic_map(signed)
    assert ours.dtype == torch.float32 and ours.shape == (256,), "256 float32 levels"
    assert torch.all(ours[1:] > ours[:-1]), "sorted ascending, no level twice"
    assert torch.equal(ours, dynamic_map(signed)), "the levels differ from minilora.quant.dynamic8.dynamic_map"
    bnbF = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(ours, bnbF.create_dynamic_map(signed=signed))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 256), signed=st.booleans(), seed=st.integers(0, 10_000))
def test_quantize_block_matches_the_library(n, signed, seed):
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(3)  # values over several decades
    block = block if signed else block.abs()
    code = dynamic_map(signed)
    idx, absmax = ex.quantize_block(block, code)
    want_idx, want_absmax = quantize_blockwise_8bit(block, code, blocksize=256)  # one block
    assert idx.dtype == torch.uint8 and idx.shape == (n,)
    assert float(absmax) == want_absmax.item()
    assert torch.equal(idx, want_idx), f"{int((idx != want_idx).sum())} of {n} indices are not the nearest level"


def test_nearest_is_never_farther_than_bitsandbytes():
    """bitsandbytes' CPU kernel first rounds block/absmax to a grid of 65,536 points: its level may be farther."""
    bnbF = pytest.importorskip("bitsandbytes.functional")
    block = torch.randn(256, generator=torch.Generator().manual_seed(0)) * 1e-3
    block[5] = 0.0
    code = dynamic_map(True)
    idx, absmax = ex.quantize_block(block, code)
    theirs, _ = bnbF.quantize_blockwise(block, code=code.clone(), blocksize=256)
    v = block / absmax
    assert torch.all((code[idx.long()] - v).abs() <= (code[theirs.long()] - v).abs() + 1e-7)
    assert code[int(idx[5])] == 0 and code[int(theirs[5])] > 0  # an exact zero: level 0 here, 2e-5 on bitsandbytes' grid


def test_all_zero_block():
    idx, absmax = ex.quantize_block(torch.zeros(7), dynamic_map(True))
    assert float(absmax) == 0.0 and idx.tolist() == [0] * 7


@pytest.mark.parametrize("signed", [True, False])
def test_a_value_on_a_midpoint_goes_to_the_lower_level(signed):
    """A value exactly halfway between two levels (in float32, where the midpoint is exact) is a tie."""
    code = dynamic_map(signed)
    lower, upper = code[:-1], code[1:]
    midpoint = (lower + upper) / 2
    exact = (lower.double() + upper.double()) / 2 == midpoint.double()  # no rounding in the halving
    ties = midpoint[exact]
    block = torch.cat([torch.ones(1), ties])  # absmax 1: the scaled values ARE the midpoints
    idx, absmax = ex.quantize_block(block, code)
    assert float(absmax) == 1.0
    want = torch.arange(255)[exact]  # the index of each midpoint's lower level
    got = idx[1:].long()
    if not torch.equal(got, want):
        i = int((got != want).nonzero()[0])
        pytest.fail(f"the value {ties[i].item():.9g}, exactly halfway between levels {int(want[i])} and "
                    f"{int(want[i]) + 1}, went to level {int(got[i])}: a tie goes to the LOWER level, as the stub "
                    f"says — torch.bucketize(v, midpoints) with right=False counts only the midpoints strictly "
                    f"below v ({int((got > want).sum())} of {len(want)} ties were rounded up)")

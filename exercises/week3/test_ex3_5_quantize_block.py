import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.quant import NF4_CODEBOOK, quantize_nf4, unpack_nibbles

pytestmark = pytest.mark.ex3_5
ex = exercise("ex3_5_quantize_block")


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 128), seed=st.integers(0, 10_000))
def test_matches_the_library_on_one_block(n, seed):
    block = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    idx, absmax = ex.quantize_block(block, NF4_CODEBOOK)
    state = quantize_nf4(block, blocksize=128)  # one block
    assert idx.dtype == torch.uint8 and idx.shape == (n,)
    assert torch.equal(idx, unpack_nibbles(state.codes, n))
    assert float(absmax) == state.absmax.item()


def test_extremes_map_to_the_ends():
    idx, absmax = ex.quantize_block(torch.tensor([-2.0, 0.0, 1.0, 2.0]), NF4_CODEBOOK)
    assert idx.tolist() == [0, 7, 12, 15] and float(absmax) == 2.0  # 0.5 is nearer 0.4407 (12) than 0.5626 (13)


def test_a_tie_goes_to_the_lower_level():
    levels = torch.arange(-8, 8, dtype=torch.float32) / 8  # -1, -0.875, ..., 0.875: exact midpoints exist
    block = torch.tensor([0.0625, -0.4375, 1.0])  # halfway between 0 and 0.125, and between -0.5 and -0.375
    idx, _ = ex.quantize_block(block, levels)
    assert idx.tolist()[:2] == [8, 4], (
        f"halfway values went to levels {idx.tolist()[:2]}: on a tie take the LOWER level (indices 8 and 4); "
        f"argmin returns the first of equal distances")


def test_an_all_zero_block():
    idx, absmax = ex.quantize_block(torch.zeros(5), NF4_CODEBOOK)
    assert float(absmax) == 0.0
    assert idx.tolist() == [7] * 5, "an all-zero block is scaled to 0, not divided by 0: every index is 7 (level 0)"


def test_absmax_is_a_float32_scalar_tensor():
    _, absmax = ex.quantize_block(torch.tensor([0.5, -3.0, 1.0]), NF4_CODEBOOK)
    assert isinstance(absmax, torch.Tensor) and absmax.dim() == 0 and absmax.dtype == torch.float32, (
        f"return absmax as a float32 0-d tensor (block.abs().max()), got {absmax!r}")

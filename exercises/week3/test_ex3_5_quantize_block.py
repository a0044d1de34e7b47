import pytest
import torch
from hypothesis import given, settings, strategies as st

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

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.quant import NF4_CODEBOOK, dequantize_nf4_reference, quantize_nf4

pytestmark = pytest.mark.ex3_7
ex = exercise("ex3_7_dequantize")


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), blocksize=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 10_000))
def test_matches_the_library(rows, cols, blocksize, seed):
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    state = quantize_nf4(x, blocksize)
    out = ex.dequantize(state.codes, state.absmax, blocksize, (rows, cols), NF4_CODEBOOK)
    assert out.shape == (rows, cols) and out.dtype == torch.float32
    assert torch.equal(out, dequantize_nf4_reference(state, torch.float32))


def test_each_block_keeps_its_extreme_value():
    x = torch.tensor([[0.1, -3.0, 0.2, 0.3], [0.5, 0.25, -0.1, 0.05]])
    state = quantize_nf4(x, 4)
    out = ex.dequantize(state.codes, state.absmax, 4, (2, 4), NF4_CODEBOOK)
    assert out[0, 1] == -3.0 and out[1, 0] == 0.5

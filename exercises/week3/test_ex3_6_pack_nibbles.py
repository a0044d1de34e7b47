import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.quant import pack_nibbles

pytestmark = pytest.mark.ex3_6
ex = exercise("ex3_6_pack_nibbles")


def test_first_index_in_the_high_nibble():
    assert ex.pack(torch.tensor([0xA, 0x3], dtype=torch.uint8)).tolist() == [0xA3]
    assert ex.pack(torch.tensor([1, 2, 3], dtype=torch.uint8)).tolist() == [0x12, 0x37]  # odd: padded with 7


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_matches_the_library_and_round_trips(n, seed):
    idx = torch.randint(0, 16, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    packed = ex.pack(idx)
    assert packed.dtype == torch.uint8 and torch.equal(packed, pack_nibbles(idx))
    assert torch.equal(ex.unpack(packed, n), idx)

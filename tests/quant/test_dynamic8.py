"""Blockwise 8-bit dynamic quantization against bitsandbytes' `quantize_blockwise` on CPU: the maps, byte-exact codes
and absmax with rounding="grid", the exact-nearest rounding and its stated distance from bitsandbytes, bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.quant import dequantize_blockwise_8bit, dynamic_map_8bit, quantize_blockwise_8bit
from minilora.quant.dynamic8 import GRID_POINTS, dynamic_map

bnbF = pytest.importorskip("bitsandbytes.functional")  # a dev dependency: always installed in CI

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
shapes = st.lists(st.integers(1, 300), min_size=1, max_size=3).map(tuple).filter(lambda s: torch.Size(s).numel()
                                                                                   <= 60_000)


def _rand(shape, dtype, seed, signed=True):
    """Values spread over several decades, as optimizer moments are; a few exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.rand(shape, generator=g).pow(4) * 10 ** (seed % 5 - 2)
    x = x.masked_fill(torch.rand(shape, generator=g) < 0.01, 0.0)
    return (x if signed else x.abs()).to(dtype)


# --- the maps ---------------------------------------------------------------------------------------------------------
def test_maps_are_bitsandbytes_maps():
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    assert torch.equal(signed, bnbF.create_dynamic_map(signed=True)) and torch.equal(signed, dynamic_map_8bit())
    assert torch.equal(unsigned, bnbF.create_dynamic_map(signed=False))
    for code in (signed, unsigned):
        assert code.shape == (256,) and torch.all(code[1:] > code[:-1]) and code[-1] == 1 and (code == 0).sum() == 1
    assert signed[0] < -0.99 and unsigned[0] == 0  # signed: [-0.993, 1]; unsigned: [0, 1]
    # the unsigned map spends the sign bit on the fraction: twice the levels per decade, e.g. in [0.1, 1]
    assert ((unsigned >= 0.1) & (unsigned < 1)).sum() == 2 * ((signed >= 0.1) & (signed < 1)).sum() == 128


# --- byte-exact against bitsandbytes ------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(shape=shapes, blocksize=st.sampled_from([256, 2048]), dtype=st.sampled_from(DTYPES),
       signed=st.booleans(), seed=st.integers(0, 2**16))
def test_grid_rounding_equals_bitsandbytes_byte_for_byte(shape, blocksize, dtype, signed, seed):
    x = _rand(shape, dtype, seed, signed)
    code = dynamic_map(signed)
    theirs, qs = bnbF.quantize_blockwise(x, code=code.clone(), blocksize=blocksize)
    ours, absmax = quantize_blockwise_8bit(x, code, blocksize, rounding="grid")
    assert ours.dtype == torch.uint8 and ours.shape == x.shape and torch.equal(ours, theirs)
    assert absmax.dtype == torch.float32 and torch.equal(absmax, qs.absmax)  # incl. the partial last block
    # back: bitsandbytes' dequantization in the original dtype, bit for bit
    assert torch.equal(dequantize_blockwise_8bit(theirs, qs.absmax, code, blocksize, dtype),
                       bnbF.dequantize_blockwise(theirs, qs))


def test_all_zero_block_and_exact_extremes():
    x = torch.zeros(3 * 256)
    x[256:512] = torch.linspace(-2, 2, 256)
    x[600] = 5.0
    for rounding in ("nearest", "grid"):
        idx, absmax = quantize_blockwise_8bit(x, blocksize=256, rounding=rounding)
        assert absmax.tolist() == [0.0, 2.0, 5.0]
        assert torch.all(idx[:256] == 0)  # all-zero block: index 0 (absmax 0 decodes it to 0), as bitsandbytes
        back = dequantize_blockwise_8bit(idx, absmax, blocksize=256)
        assert torch.all(back[:256] == 0) and back[256] == 2 * dynamic_map(True)[0] and back[511] == 2
        assert back[600] == 5.0  # a block's largest magnitude comes back exactly (level 1.0)
    theirs, _ = bnbF.quantize_blockwise(x, blocksize=256)
    assert torch.equal(quantize_blockwise_8bit(x, blocksize=256, rounding="grid")[0], theirs)


# --- exact nearest rounding, and how far bitsandbytes' CPU grid is from it -------------------------------------------
@settings(max_examples=20, deadline=None)
@given(shape=shapes, blocksize=st.sampled_from([256, 2048]), signed=st.booleans(), seed=st.integers(0, 2**16))
def test_nearest_is_nearest_and_grid_costs_at_most_two_grid_half_steps(shape, blocksize, signed, seed):
    """Stated tolerance: our "nearest" level is never farther from x/absmax than any other level (ties aside, to
    1 ulp); bitsandbytes' CPU level is farther by at most 2/65535 (one grid step: the value moves ≤ 1/65535 to its
    grid point, and the level nearest that point is ≤ 1/65535 farther from x than the nearest to x)."""
    x = _rand(shape, torch.float32, seed, signed)
    code = dynamic_map(signed)
    idx, absmax = quantize_blockwise_8bit(x, code, blocksize)
    theirs, _ = bnbF.quantize_blockwise(x, code=code.clone(), blocksize=blocksize)
    per_value = absmax.repeat_interleave(blocksize)[: x.numel()]
    keep = per_value > 0
    v = x.reshape(-1)[keep] / per_value[keep]
    ours_err = (code[idx.reshape(-1)[keep].long()] - v).abs()
    assert torch.all(ours_err <= (code.unsqueeze(0) - v.unsqueeze(1)).abs().amin(1) + 1e-7)
    theirs_err = (code[theirs.reshape(-1)[keep].long()] - v).abs()
    assert torch.all(theirs_err <= ours_err + 2 / (GRID_POINTS - 1) + 1e-7)


def test_where_grid_and_nearest_differ():
    """On moment-like data the two roundings differ for a few percent of the values, almost all of them far below
    their block's absmax (|x| < 2e-3·absmax), where the grid is coarser than the map's small levels."""
    x = _rand((64, 1024), torch.float32, 3)
    idx_n, absmax = quantize_blockwise_8bit(x, blocksize=256)
    idx_g, _ = quantize_blockwise_8bit(x, blocksize=256, rounding="grid")
    differ = (idx_n != idx_g).reshape(-1)
    rel = (x.reshape(-1) / absmax.repeat_interleave(256)).abs()
    assert 0 < differ.float().mean() < 0.15
    assert (rel[differ] < 2e-3).float().mean() > 0.9


# --- dequantization ---------------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(shape=shapes, blocksize=st.sampled_from([256, 2048]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_the_local_gap(shape, blocksize, dtype, seed):
    x = _rand(shape, dtype, seed)
    code = dynamic_map(True)
    idx, absmax = quantize_blockwise_8bit(x, code, blocksize)
    back = dequantize_blockwise_8bit(idx, absmax, code, blocksize)  # float32
    assert back.shape == x.shape
    per_value = absmax.repeat_interleave(blocksize)[: x.numel()].view(x.shape)
    # 0.0070 of the absmax, near ±1 (-absmax itself lands on -0.99297: the signed map has no -1); + float rounding
    half_gap = (code[1:] - code[:-1]).max().item() / 2
    assert torch.all((back - x.float()).abs() <= per_value * (half_gap + 1e-6))


# --- bad input --------------------------------------------------------------------------------------------------------
def test_bad_input_names_the_problem():
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        quantize_blockwise_8bit(torch.ones(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_blockwise_8bit(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="power of two"):
        quantize_blockwise_8bit(torch.ones(4), blocksize=100)
    with pytest.raises(ValueError, match="rounding"):
        quantize_blockwise_8bit(torch.ones(4), rounding="stochastic")
    with pytest.raises(ValueError, match="256 sorted levels"):
        quantize_blockwise_8bit(torch.ones(4), code=torch.linspace(-1, 1, 16))
    idx, absmax = quantize_blockwise_8bit(torch.ones(600))
    with pytest.raises(ValueError, match="need 3 scales"):
        dequantize_blockwise_8bit(idx, absmax[:2])

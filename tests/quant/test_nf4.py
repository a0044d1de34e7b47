"""NF4: the codebook, blockwise quantization byte for byte against bitsandbytes, double quantization, the Triton
dequantization kernel against the reference, round-trip error bounds and bad input."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.kernels.nf4_dequant import LOOKUP_GATHER, LOOKUP_PAIR, LOOKUP_SELECT, dequantize_nf4_triton
from minilora.quant import (
    NF4_CODEBOOK,
    NF4State,
    check_state,
    dequantize_nf4_reference,
    derive_nf4_codebook,
    dynamic_map_8bit,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)

bnbF = pytest.importorskip("bitsandbytes.functional")  # a dev dependency: always installed in CI

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BNB_BLOCKSIZES = [32, 64, 128, 256, 512, 1024]  # bitsandbytes accepts 32 … 4096
shapes = st.lists(st.integers(1, 97), min_size=1, max_size=3).map(tuple)


def _bnb_dequantize(packed, qs):
    """bitsandbytes' dequantization of the FLAT tensor, run eagerly.

    Flat, because bitsandbytes 0.50.2's native CPU kernel restarts its blocks at every row: for a 2-D weight whose
    row length is not a multiple of the block size it scales values with the wrong absmax (its bytes are right; its
    own quantize is flat). Eagerly, because its fallback for odd lengths would torch.compile itself per shape.
    """
    qs = copy.copy(qs)
    qs.shape = torch.Size([qs.shape.numel()])
    with torch._dynamo.config.patch(disable=True):
        return bnbF.dequantize_4bit(packed, qs).reshape(-1)


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * torch.rand(1, generator=g).item() * 3 + 1e-3).to(dtype)


# --- the codebook ---------------------------------------------------------------------------------------------------
def test_derived_codebook_matches_published_table():
    derived = derive_nf4_codebook()
    assert derived.shape == (16,) and torch.all(derived[1:] > derived[:-1])
    assert derived[0] == -1 and derived[-1] == 1 and (derived == 0).sum() == 1
    assert (derived < 0).sum() == 7 and (derived > 0).sum() == 8  # asymmetric: 7 negative, 8 positive, one zero
    # QLoRA's published values are float32 roundings of the same quantiles: equal to 2e-7
    torch.testing.assert_close(derived.float(), NF4_CODEBOOK, rtol=0, atol=2e-7)


def test_published_table_is_bitsandbytes_table():
    assert torch.equal(NF4_CODEBOOK, bnbF.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_map_8bit(), bnbF.create_dynamic_map())


# --- packing --------------------------------------------------------------------------------------------------------
def test_first_value_goes_to_the_high_nibble():
    packed = pack_nibbles(torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert packed.tolist() == [0x12, 0x37]  # odd length: padded with index 7, the exact zero
    assert unpack_nibbles(packed, 3).tolist() == [1, 2, 3]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 301), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(n, seed):
    idx = torch.randint(0, 16, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles(pack_nibbles(idx), n), idx)


# --- byte-exact against bitsandbytes ----------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(shape=shapes, blocksize=st.sampled_from(BNB_BLOCKSIZES), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_bytes_and_absmax_equal_bitsandbytes(shape, blocksize, dtype, seed):
    x = _rand(shape, dtype, seed)
    packed, qs = bnbF.quantize_4bit(x, blocksize=blocksize, quant_type="nf4")
    state = quantize_nf4(x, blocksize)
    assert state.codes.dtype == torch.uint8 and torch.equal(state.codes, packed.reshape(-1))
    assert torch.equal(state.absmax, qs.absmax)  # includes the partial last block when numel % blocksize != 0
    # and back: the same float values, in the original dtype
    assert torch.equal(dequantize_nf4_reference(state).reshape(-1), _bnb_dequantize(packed, qs))


@settings(max_examples=15, deadline=None)
@given(n_blocks=st.integers(1, 700), blocksize=st.sampled_from([32, 64]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_double_quant_state_matches_bitsandbytes_nested_state(n_blocks, blocksize, dtype, seed):
    """Stated tolerance: offset, group scales and the 8-bit map are equal bit for bit. The 8-bit absmax codes are
    the exact nearest level here; bitsandbytes' native CPU search is approximate near the midpoints between two
    levels (0.16% of codes differ on Gaussian data, up to ~2% on the clustered absmax values; it also maps an exact
    0 to 2e-5): at most 1 + 5% of the codes differ, by at most the widest map step (0.0141 of the group scale), and
    ours is never farther from the value than theirs."""
    x = _rand((n_blocks * blocksize - seed % 7,), dtype, seed)  # also a partial last block
    packed, qs = bnbF.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
    state = quantize_nf4(x, blocksize, double_quant=True)
    dq = state.double_quant
    assert state.absmax is None and torch.equal(state.codes, packed.reshape(-1))
    assert torch.equal(dq.offset, qs.offset)
    assert torch.equal(dq.scales, qs.state2.absmax) and dq.blocksize == qs.state2.blocksize == 256
    assert torch.equal(dq.code, qs.state2.code)
    ours, theirs = dq.absmax_codes.long(), qs.absmax.long()
    assert (ours != theirs).sum() <= 1 + 0.05 * ours.numel()
    max_step = (dq.code[1:] - dq.code[:-1]).max()  # 0.0141: the widest gap of the dynamic map
    group_scale = qs.state2.absmax.repeat_interleave(256)[:ours.numel()]
    assert torch.all(((dq.code[ours] - dq.code[theirs]) * group_scale).abs() <= max_step * group_scale)
    absmax_true = quantize_nf4(x, blocksize).absmax
    target = ((absmax_true - dq.offset) / group_scale.clamp(min=1e-38)).clamp(-1, 1)
    differ = (ours != theirs) & (group_scale > 0)  # a group of equal absmax values (scale 0) decodes to 0 either way
    ours, theirs, target = ours[differ], theirs[differ], target[differ]
    assert torch.all((target - dq.code[ours]).abs() <= (target - dq.code[theirs]).abs() + 1e-7)


def test_double_quant_dequantizes_like_bitsandbytes():
    x = _rand((300, 130), torch.float16, 7)
    packed, qs = bnbF.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    ours = dequantize_nf4_reference(quantize_nf4(x, 64, double_quant=True)).float().reshape(-1)
    theirs = _bnb_dequantize(packed, qs).float()
    # where the 8-bit absmax codes agree the values agree to fp16 rounding; a near-tie flips one 8-bit step
    assert (ours != theirs).float().mean() < 0.02
    torch.testing.assert_close(ours, theirs, rtol=0.02, atol=1e-3)


# --- round-trip error ----------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(shape=shapes, blocksize=st.sampled_from([2, 8, 16, 64, 256]), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_the_widest_gap(shape, blocksize, seed):
    x = _rand(shape, torch.float32, seed)
    state = quantize_nf4(x, blocksize)
    back = dequantize_nf4_reference(state)
    half_gap = ((NF4_CODEBOOK[1:] - NF4_CODEBOOK[:-1]).max() / 2).item()  # 0.1385: between 0.7230 and 1.0
    per_value_absmax = state.absmax.repeat_interleave(blocksize)[:x.numel()].view(x.shape)
    assert torch.all((back - x).abs() <= per_value_absmax * half_gap * (1 + 1e-6))
    assert torch.all(back.abs() <= per_value_absmax)  # every block's extreme value comes back exactly
    assert torch.equal(back.abs().reshape(-1).amax(), x.abs().reshape(-1).amax())


def test_gaussian_relative_error_and_double_quant_overhead():
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    plain, dq = quantize_nf4(x, 64), quantize_nf4(x, 64, double_quant=True)
    err = lambda s: ((dequantize_nf4_reference(s) - x).norm() / x.norm()).item()
    assert err(plain) < 0.11  # NF4 on normal data: ~9.5% relative RMS error
    assert err(dq) < err(plain) * 1.01  # double quantization costs almost nothing in accuracy …
    assert plain.bits_per_param() == pytest.approx(4 + 32 / 64, abs=1e-9)  # 4.5 bits
    assert dq.bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=2e-3)  # … and saves 0.37 bits


# --- the Triton kernel ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape,blocksize,tile", [((37, 53), 64, 64), ((129,), 32, 2048), ((5, 300), 256, 512),
                                                  ((9,), 2, 4), ((2, 4100), 4096, 1024)])
def test_triton_dequant_matches_reference(shape, blocksize, tile, double_quant):
    x = _rand(shape, torch.float32, sum(shape))
    state = quantize_nf4(x, blocksize, double_quant)
    for dtype, lookup in zip(DTYPES, (LOOKUP_GATHER, LOOKUP_PAIR, LOOKUP_SELECT)):
        ref = dequantize_nf4_reference(state, dtype)
        tri = dequantize_nf4_triton(state, dtype, tile_bytes=tile, lookup=lookup)
        assert tri.shape == ref.shape and tri.dtype == dtype
        if dtype == torch.bfloat16:  # the interpreter truncates fp32 → bf16 (the GPU rounds): one bf16 ulp
            torch.testing.assert_close(tri.float(), ref.float(), rtol=2 ** -7, atol=0)
        else:
            assert torch.equal(tri, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,blocksize", [((4096, 4096), 64), ((1000, 333), 64), ((3, 5), 32), ((14336, 4096), 64)])
def test_triton_dequant_compiled_matches_reference(shape, blocksize, dtype, double_quant):
    x = torch.randn(shape, device="cuda", dtype=dtype)
    state = quantize_nf4(x, blocksize, double_quant)
    ref = dequantize_nf4_reference(state)
    for lookup in (LOOKUP_GATHER, LOOKUP_PAIR, LOOKUP_SELECT):
        tri = dequantize_nf4_triton(state, lookup=lookup)
        if double_quant:  # the kernel may fuse code·scale + offset into one FMA: the absmax's last bit may differ
            torch.testing.assert_close(tri.float(), ref.float(), rtol=2e-6 if dtype == torch.float32 else 2 ** -7,
                                       atol=0)
        else:
            assert torch.equal(tri, ref)


@pytest.mark.gpu
def test_cuda_bytes_equal_cpu_bytes():
    x = torch.randn(777, 129)
    cpu, gpu = quantize_nf4(x, 64, True), quantize_nf4(x.cuda(), 64, True)
    assert torch.equal(cpu.codes, gpu.codes.cpu())
    assert torch.equal(cpu.double_quant.absmax_codes, gpu.double_quant.absmax_codes.cpu())


# --- bad input ------------------------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    with pytest.raises(TypeError, match="floating-point"):
        quantize_nf4(torch.arange(64))
    with pytest.raises(TypeError, match="float64"):
        quantize_nf4(torch.randn(64, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize_nf4([1.0, 2.0])
    for bad in (48, 0, 1, -64, 64.0, True):
        with pytest.raises(ValueError, match="power of two"):
            quantize_nf4(torch.randn(128), blocksize=bad)
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.randn(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nf4(torch.tensor([1.0, float("nan"), 2.0]))


def test_state_that_does_not_match_is_refused():
    a, b = quantize_nf4(torch.randn(64, 64)), quantize_nf4(torch.randn(32, 64))
    wrong = NF4State(b.codes, a.absmax, a.blocksize, a.shape, a.dtype)  # codes of another tensor
    with pytest.raises(ValueError, match="belong to another tensor"):
        dequantize_nf4_reference(wrong)
    with pytest.raises(ValueError, match="one per block"):
        check_state(NF4State(a.codes, b.absmax, a.blocksize, a.shape, a.dtype))
    with pytest.raises(ValueError, match="exactly one of"):
        check_state(NF4State(a.codes, None, a.blocksize, a.shape, a.dtype))
    with pytest.raises(ValueError, match="uint8"):
        dequantize_nf4_triton(NF4State(a.codes.int(), a.absmax, 64, a.shape, a.dtype))
    with pytest.raises(TypeError, match="dequantize to"):
        dequantize_nf4_reference(a, torch.int8)
    with pytest.raises(ValueError, match="lookup must be"):
        dequantize_nf4_triton(a, lookup=7)

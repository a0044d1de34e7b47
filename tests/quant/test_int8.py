"""LLM.int8-style row-wise quantization against bitsandbytes' `int8_vectorwise_quant` / `int8_vectorwise_dequant`
(codes, row scales and outlier columns equal), the round-trip error bound and bad input."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.quant.int8 import dequantize_rowwise_int8, outlier_columns, quantize_rowwise_int8

bnbF = pytest.importorskip("bitsandbytes.functional")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _weight(rows, cols, dtype, seed, n_outliers=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.5
    w[torch.rand(rows, cols, generator=g) < 0.05] = 0.0
    if n_outliers:  # a few large values, in a few columns, as LLM.int8 describes activations
        cols_hit = torch.randperm(cols, generator=g)[:n_outliers]
        rows_hit = torch.randint(0, rows, (n_outliers,), generator=g)
        w[rows_hit, cols_hit] = torch.randn(n_outliers, generator=g).sign() * (6 + 10 * torch.rand(n_outliers,
                                                                                                   generator=g))
    return w.to(dtype)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 90), dtype=st.sampled_from(DTYPES),
       threshold=st.sampled_from([0.0, 6.0]), n_outliers=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_codes_scales_and_outlier_columns_equal_bitsandbytes(rows, cols, dtype, threshold, n_outliers, seed):
    w = _weight(rows, cols, dtype, seed, min(n_outliers, cols))
    w[seed % rows] = 0.0  # an all-zero row too
    c_theirs, s_theirs, o_theirs = bnbF.int8_vectorwise_quant(w.clone(), threshold)
    codes, scales, cols_ours = quantize_rowwise_int8(w, threshold)
    assert codes.dtype == torch.int8 and torch.equal(codes, c_theirs)
    assert scales.dtype == torch.float32 and torch.equal(scales, s_theirs)
    if o_theirs is None:  # bitsandbytes: None when threshold is 0
        assert threshold == 0 and cols_ours.numel() == 0
    else:
        assert torch.equal(cols_ours, o_theirs.long())
    # dequantization: bit for bit the same float32 values
    assert torch.equal(dequantize_rowwise_int8(codes, scales), bnbF.int8_vectorwise_dequant(c_theirs, s_theirs))


def test_what_an_outlier_column_means():
    w = torch.tensor([[0.5, -7.0, 1.0],
                      [2.0, 0.25, -0.5]])
    codes, scales, cols = quantize_rowwise_int8(w, threshold=6.0)
    assert cols.tolist() == [1] == outlier_columns(w, 6.0).tolist()
    assert codes[:, 1].tolist() == [0, 0]  # the whole column leaves the int8 part …
    # … but only the outlier VALUE leaves the absmax: row 1's 0.25 in column 1 still counts (it is no max here)
    assert scales.tolist() == [1.0, 2.0]
    assert codes[0].tolist() == [64, 0, 127] and codes[1].tolist() == [127, 0, -32]  # 63.5 → 64, -31.75 → -32


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 60), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_a_step(rows, cols, dtype, seed):
    w = _weight(rows, cols, dtype, seed)
    codes, scales, _ = quantize_rowwise_int8(w)
    back = dequantize_rowwise_int8(codes, scales)
    step = scales.view(-1, 1) / 127  # one int8 step of each row
    assert torch.all((back - w.float()).abs() <= step * (0.5 + 1e-5))
    # each row's absmax comes back (127 · s · fp32(1/127): to one float32 rounding)
    torch.testing.assert_close(back.abs().amax(1), w.float().abs().amax(1), rtol=2e-7, atol=0)


def test_bad_input_names_the_problem():
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        quantize_rowwise_int8(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        quantize_rowwise_int8(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_rowwise_int8(torch.tensor([[1.0, float("inf")]]))
    codes, scales, _ = quantize_rowwise_int8(torch.ones(3, 4))
    with pytest.raises(ValueError, match="3 row scales"):
        dequantize_rowwise_int8(codes, scales[:2])
    with pytest.raises(TypeError, match="int8"):
        dequantize_rowwise_int8(codes.to(torch.uint8), scales)

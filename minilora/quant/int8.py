"""LLM.int8()-style vector-wise quantization: one absmax per row, int8 codes, outlier columns kept aside.

Per row r of a 2-D tensor A (for a linear weight (out, in): per output feature):

    scale_r = max_c |A[r, c]|               (float32; "row stats")
    code[r, c] = round(A[r, c] · 127 / scale_r)   ∈ [-127, 127], int8 (round half to even)
    A[r, c] ≈ code[r, c] · scale_r / 127

1 byte a value + 4 bytes a row. One large value squeezes a whole row onto a few levels, and LLM.int8 (Dettmers et
al., 2022) found that such outliers sit in a few *columns* (feature dimensions). With `threshold` > 0, every column
holding any |A| ≥ threshold is an outlier column: its values are left out of the row absmax, its int8 codes are 0,
and the caller keeps those columns in 16-bit (`outlier_columns(A, threshold)` lists them). Byte for byte what
`bitsandbytes.functional.int8_vectorwise_quant` returns (0.50.2), where the only outlier *values* (|A| ≥ threshold)
leave the absmax, not the whole column — see `quantize_rowwise_int8`.
"""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_matrix(A) -> None:
    if not isinstance(A, torch.Tensor) or A.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"int8 quantization needs a float32/float16/bfloat16 tensor, got "
                        f"{getattr(A, 'dtype', type(A).__name__)}")
    if A.dim() != 2 or A.numel() == 0:
        raise ValueError(f"int8 vector-wise quantization works on a non-empty 2-D matrix (rows, columns), got shape "
                         f"{tuple(A.shape)}: reshape it to (-1, last_dim) first")
    if not torch.isfinite(A).all():
        raise ValueError("the matrix to quantize contains NaN or inf: a row's absmax would be meaningless")


def outlier_columns(A: torch.Tensor, threshold: float) -> torch.Tensor:
    """int64 indices (sorted) of the columns holding any |A| ≥ threshold; empty when threshold ≤ 0 or none does."""
    if threshold <= 0:
        return torch.empty(0, dtype=torch.int64, device=A.device)
    return torch.nonzero((A.abs() >= threshold).any(dim=0)).view(-1)


def quantize_rowwise_int8(A: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols) float → int8 codes (rows, cols), float32 row scales (rows,), int64 outlier columns.

    With threshold > 0, the values |A| ≥ threshold are excluded from their row's absmax (the other values of an
    outlier column still count, as in bitsandbytes) and every outlier column's codes are 0. A row whose absmax is 0
    gets codes 0. bitsandbytes returns None for the columns when threshold is 0; here it is an empty tensor.
    """
    _check_matrix(A)
    x = A.detach().float()  # fp16 / bf16 → fp32 is exact; bitsandbytes computes the scaling in fp32 too
    cols = outlier_columns(x, threshold)
    if cols.numel():
        x = x.masked_fill(x.abs() >= threshold, 0.0)  # outlier values must not stretch their row's scale
    scales = x.abs().amax(dim=1)  # (rows,)
    codes = torch.round(x * (127.0 / scales.unsqueeze(1))).nan_to_num_(0.0).to(torch.int8)  # 0/0 rows → 0
    if cols.numel():
        codes[:, cols] = 0  # these columns live in 16-bit elsewhere
    return codes, scales, cols


def dequantize_rowwise_int8(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32):
    """codes · scale_row / 127, computed in float32 (as bitsandbytes: times the float32 reciprocal of 127)."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(f"int8 codes must be a 2-D int8 tensor, got {codes.dtype} of shape {tuple(codes.shape)}")
    if scales.shape != (codes.shape[0],):
        raise ValueError(f"{codes.shape[0]} rows need {codes.shape[0]} row scales, got shape {tuple(scales.shape)}")
    return (codes * scales.float().view(-1, 1) * (1.0 / 127)).to(dtype)

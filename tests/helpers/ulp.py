"""Tolerances in units in the last place (ulp) of a dtype, shared by the kernel tests.

A kernel that computes in fp32 and rounds once on store is within 1 ulp of the float64 truth; the interpreter
truncates instead of rounding (FIELD-NOTES), which still stays within 1 ulp. fp32 uses a relative 1e-5 instead.
"""
import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MANTISSA = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}
TINY = {torch.float32: 2.0**-126, torch.float16: 2.0**-14, torch.bfloat16: 2.0**-126}


def assert_within_ulp(actual, truth, dtype, ulps=1.0, slack=1e-5, atol=1e-30):
    """|actual - truth| <= ulps * ulp_dtype(|truth|) + slack * max|truth| + atol, elementwise (fp32: rtol 1e-5)."""
    actual, truth = actual.detach().double().cpu(), truth.detach().double().cpu()
    mag = truth.abs().clamp_min(TINY[dtype])
    ulp = torch.exp2(torch.floor(torch.log2(mag)) - MANTISSA[dtype]) if dtype != torch.float32 else 1e-5 * mag
    bound = ulps * ulp + slack * float(truth.abs().max() if truth.numel() else 0) + atol
    err = (actual - truth).abs()
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} elements off by more than {ulps} ulp (+ slack); "
                           f"worst {float((err / bound).max()):.2f}x the bound")

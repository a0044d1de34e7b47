import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise

pytestmark = pytest.mark.ex1_1
ex = exercise("ex1_1_lora_forward")


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 7), d_in=st.integers(1, 33), d_out=st.integers(1, 33), r=st.integers(1, 8),
       alpha=st.floats(0.5, 64))
def test_lora_forward_matches_definition(n, d_in, d_out, r, alpha):
    g = torch.Generator().manual_seed(n * 1000 + d_in)
    x, W = torch.randn(n, d_in, generator=g), torch.randn(d_out, d_in, generator=g)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    expected = x @ W.T + alpha / r * x @ (B @ A).T
    torch.testing.assert_close(ex.lora_forward(x, W, A, B, alpha, r), expected, rtol=1e-4, atol=1e-4)


def test_merged_weight_gives_same_output():
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(5, 12, generator=g), torch.randn(9, 12, generator=g)
    A, B = torch.randn(4, 12, generator=g), torch.randn(9, 4, generator=g)
    merged = ex.merged_weight(W, A, B, 16, 4)
    assert merged.shape == W.shape
    torch.testing.assert_close(x @ merged.T, x @ W.T + 4 * x @ A.T @ B.T, rtol=1e-4, atol=1e-4)


def test_zero_B_leaves_the_base_output():
    x, W, A = torch.randn(3, 6), torch.randn(4, 6), torch.randn(2, 6)
    torch.testing.assert_close(ex.lora_forward(x, W, A, torch.zeros(4, 2), 16, 2), x @ W.T)


def test_lora_forward_never_forms_B_times_A():
    """The low-rank path is x -> (x A^T) -> (x A^T) B^T: two thin matmuls; an (out, in) matrix B A is never built."""
    from exercises.checks import new_tensors_of_shape, record_torch_calls
    N, d_in, d_out, r = 3, 11, 7, 2
    x, W, A, B = torch.randn(N, d_in), torch.randn(d_out, d_in), torch.randn(r, d_in), torch.randn(d_out, r)
    with record_torch_calls() as calls:
        y = ex.lora_forward(x, W, A, B, 16, r)
    torch.testing.assert_close(y, x @ W.T + 8 * (x @ A.T) @ B.T, rtol=1e-4, atol=1e-4)
    formed = new_tensors_of_shape(calls, (d_out, d_in), (d_in, d_out))
    assert not formed, (f"lora_forward built a full ({d_out}, {d_in}) matrix (in {', '.join(formed)}): compute "
                        f"(x @ A.T) first, an (N, r) matrix, then multiply it by B.T — never B @ A")

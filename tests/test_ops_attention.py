"""ops.attention: SDPA under either attention preference gives SDPA's result; an unknown preference is refused."""
import pytest
import torch
import torch.nn.functional as F

from minilora import ops


@pytest.mark.parametrize("preference", ops.SDPA_PREFERENCES)
def test_attention_is_sdpa_under_either_preference(preference):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 7, 8, generator=g) for h in (4, 2, 2))
    previous = ops.sdpa_preference()
    try:
        ops.prefer_sdpa(preference)
        got = ops.attention(q, k, v, is_causal=True, enable_gqa=True)
    finally:
        ops.prefer_sdpa(previous)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(got, want)


def test_an_unknown_preference_names_the_choices():
    with pytest.raises(ValueError, match="cudnn-first"):
        ops.prefer_sdpa("fastest")

"""Linear8bit: forward and input gradient against a dense layer holding the dequantized weight, outlier columns,
bitsandbytes' codes, LoRA on top (adapters float32, merge), quantize_model_8bit on a tiny model, dtype casts."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minilora.linear8bit import Linear8bit, quantize_model_8bit
from minilora.lora import LoraLinear

bnbF = pytest.importorskip("bitsandbytes.functional")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _linear(n_in, n_out, bias, dtype, seed, outliers=()):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        for c in outliers:
            lin.weight[seed % n_out, c] = 7.5  # a large weight in input feature c
    return lin.to(dtype)


@settings(max_examples=20, deadline=None)
@given(n_in=st.integers(2, 70), n_out=st.integers(1, 50), batch=st.integers(1, 5), bias=st.booleans(),
       dtype=st.sampled_from(list(TOL)), n_outliers=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_forward_and_input_gradient_match_the_dequantized_dense_layer(n_in, n_out, batch, bias, dtype, n_outliers,
                                                                      seed):
    lin = _linear(n_in, n_out, bias, dtype, seed, outliers=range(min(n_outliers, n_in)))
    q = Linear8bit.from_linear(lin, threshold=6.0)
    assert q.weight.dtype == torch.int8 and not q.weight.requires_grad
    assert q.outlier_idx.tolist() == list(range(min(n_outliers, n_in)))
    dense = q.dequantize(torch.float32)
    # the outlier columns come back exactly; the rest within half an int8 step of its row
    assert torch.equal(dense[:, q.outlier_idx], lin.weight.float()[:, q.outlier_idx])
    assert torch.all((dense - lin.weight.float()).abs() <= q.scales.view(-1, 1) / 127 * 0.5 + 1e-6)
    x = torch.randn(batch, 3, n_in, dtype=dtype, requires_grad=True)
    y = q(x)
    x_ref = x.detach().float().requires_grad_()
    y_ref = nn.functional.linear(x_ref, dense, None if lin.bias is None else lin.bias.float())
    torch.testing.assert_close(y.float(), y_ref, **TOL[dtype])
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g.float())
    torch.testing.assert_close(x.grad.float(), x_ref.grad, **TOL[dtype])


def test_codes_are_bitsandbytes_codes():
    lin = _linear(40, 24, False, torch.float16, 1, outliers=(3, 17))
    codes, scales, cols = bnbF.int8_vectorwise_quant(lin.weight.detach().clone(), 6.0)
    q = Linear8bit.from_linear(lin, threshold=6.0)
    assert torch.equal(q.weight, codes) and torch.equal(q.scales, scales) and torch.equal(q.outlier_idx, cols)
    assert q.weight_outliers.dtype == torch.float16 and q.weight_outliers.shape == (24, 2)


def test_given_outlier_columns_and_storage_bytes():
    lin = _linear(64, 32, False, torch.bfloat16, 2)
    q = Linear8bit.from_linear(lin, outlier_columns=torch.tensor([5, 9]))
    assert q.outlier_idx.tolist() == [5, 9] and torch.all(q.weight[:, [5, 9]] == 0)
    assert q.nbytes == 64 * 32 + 32 * 4 + 2 * 8 + 32 * 2 * 2  # codes + row scales + indices + 16-bit columns
    with pytest.raises(ValueError, match=r"lie in \[0, 64\)"):
        Linear8bit.from_linear(lin, outlier_columns=[70])


def test_lora_on_an_8bit_base_trains_only_fp32_adapters_and_merges():
    lin = _linear(48, 40, True, torch.bfloat16, 3)
    layer = LoraLinear(Linear8bit.from_linear(lin), r=4, lora_alpha=8)
    assert layer.lora_A.weight.dtype == torch.float32 and layer.lora_B.weight.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 48, dtype=torch.bfloat16)
    y = layer(x)
    y.float().sum().backward()
    assert layer.lora_A.weight.grad is not None and layer.base_layer.weight.grad is None
    layer.merge()  # dequantize + ΔW, requantize: lossy, within a few int8 steps
    torch.testing.assert_close(layer(x).float(), y.detach().float(), rtol=0.05, atol=0.05)


def test_quantize_model_8bit_on_a_tiny_model_and_dtype_casts():
    from minilora.models import ModelConfig
    from minilora.models import build_model as create_model
    from minilora.models.registry import init_weights
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    init_weights(model, seed=0)
    ids = torch.randint(0, 64, (1, 7))
    ref = model(ids).logits
    quantize_model_8bit(model)
    n8 = sum(isinstance(m, Linear8bit) for m in model.modules())
    assert n8 == 2 * 7 and isinstance(model.lm_head, nn.Linear)
    torch.testing.assert_close(model(ids).logits, ref, rtol=0.05, atol=0.05)
    model.to(torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.scales.dtype == torch.float32 and layer.weight.dtype == torch.int8
    assert model(ids).logits.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        from minilora.lora import get_peft_model
        quantize_model_8bit(get_peft_model(create_model(cfg), r=2, verbose=False))

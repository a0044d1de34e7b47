"""The 8-bit byte counts against the real tensors: Linear8bit layers, minilora's AdamW8bit state after a step and
bitsandbytes' AdamW8bit state, and the catalogue's parameter totals."""
import pytest
import torch
from torch import nn

from minilora.linear8bit import Linear8bit, quantize_model_8bit
from minilora.lora import get_peft_model
from minilora.memory import (
    adamw8bit_state_bytes,
    int8_model_weight_bytes,
    int8_weight_bytes,
    measure_training_bytes,
    optimizer_state_bytes,
    param_counts,
    trainable_tensor_sizes,
)
from minilora.models import ModelConfig, build_model, catalogue_config
from minilora.train.adamw8bit import AdamW8bit

CFG = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def test_int8_weight_bytes_are_the_layer_tensors():
    lin = nn.Linear(70, 33).to(torch.bfloat16)
    q = Linear8bit.from_linear(lin, outlier_columns=[1, 4, 9])
    assert int8_weight_bytes(33, 70, 3, torch.bfloat16)["total"] == q.nbytes
    model = build_model(CFG).to(torch.bfloat16)
    quantize_model_8bit(model)
    int8 = sum(m.nbytes for m in model.modules() if isinstance(m, Linear8bit))
    dense = sum(p.numel() * p.element_size() for p in model.parameters() if p.is_floating_point())
    assert int8_model_weight_bytes(CFG) == {"int8_linear": int8, "dense": dense, "total": int8 + dense}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_8bit_optimizer_state_bytes_are_the_state_tensors(method):
    torch.manual_seed(0)
    model = build_model(CFG)
    if method == "lora":
        get_peft_model(model, r=16, verbose=False)  # A (16, 64) = 1024 < 4096 values: 32-bit; B (160, 16): 8-bit
    sizes = trainable_tensor_sizes(CFG, method, r=16)
    assert sorted(sizes) == sorted(p.numel() for p in model.parameters() if p.requires_grad)
    ids = torch.randint(0, 96, (1, 8))
    measured = measure_training_bytes(model, ids, optimizer_cls=AdamW8bit)["optimizer"]
    assert measured == optimizer_state_bytes(sizes, "adamw_8bit")


def test_bitsandbytes_state_has_the_same_bytes():
    bnb = pytest.importorskip("bitsandbytes")
    params = [nn.Parameter(torch.randn(n)) for n in (100, 4096, 5000, 70_000)]
    opt = bnb.optim.AdamW8bit(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in params:
        st = opt.state[p]
        keys = ["state1", "state2"] + (["absmax1", "absmax2"] if "absmax1" in st else [])
        assert sum(st[k].numel() * st[k].element_size() for k in keys) == adamw8bit_state_bytes(p.numel())


def test_llama3_8b_figures():
    cfg = catalogue_config("llama-3-8b")
    full = trainable_tensor_sizes(cfg, "full")
    assert sum(full) == param_counts(cfg)["total"] == 8_030_261_248
    # 8-bit AdamW: 2 bytes a parameter + 8 bytes per 256 values ≈ 2.03, against 8 with float32 moments
    ratio = optimizer_state_bytes(full, "adamw_8bit") / optimizer_state_bytes(full, "adamw")
    assert ratio == pytest.approx((2 + 8 / 256) / 8, rel=1e-4)
    lora = trainable_tensor_sizes(cfg, "lora", r=16)
    assert sum(lora) == 41_943_040 and min(lora) >= 4096  # every LoRA matrix is large enough for 8-bit states


def test_bad_arguments():
    with pytest.raises(ValueError, match="adamw_8bit"):
        optimizer_state_bytes([10], "sgd")
    with pytest.raises(ValueError, match="'full' or 'lora'"):
        trainable_tensor_sizes(CFG, "qlora")

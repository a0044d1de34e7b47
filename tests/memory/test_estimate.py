"""Memory accounting: predictions against the bytes of real tensors (SmolLM2's shapes), NF4 state overhead."""
import copy

import pytest
import torch

from minilora.linear4bit import quantize_model
from minilora.lora import get_peft_model
from minilora.memory import (
    METHODS,
    estimate_memory,
    lora_param_count,
    measure_model_bytes,
    measure_training_bytes,
    nf4_bytes,
    param_counts,
    quant_state_bits_per_param,
    table,
)
from minilora.models.registry import build_model, catalogue_config
from minilora.quant import quantize_nf4


def test_quant_state_bits_per_param():
    assert quant_state_bits_per_param(64, double_quant=False) == 0.5
    assert quant_state_bits_per_param(64, double_quant=True) == pytest.approx(0.126953125)
    x = torch.randn(1024, 1024)
    for dq in (False, True):
        state = quantize_nf4(x, 64, dq)
        assert state.nbytes == nf4_bytes(x.numel(), 64, dq)["total"]
        assert state.bits_per_param() - 4 == pytest.approx(quant_state_bits_per_param(64, dq), abs=1e-4)


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-3-8b", "qwen2-0.5b"])
def test_param_counts_match_the_model_tensors(name):
    cfg = catalogue_config(name)
    model = build_model(cfg, device="meta")  # shapes only: no memory
    real = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert param_counts(cfg)["total"] == real


def test_lora_param_count_matches_get_peft_model():
    cfg = catalogue_config("smollm2-135m")
    model = get_peft_model(build_model(cfg, device="meta"), r=16, verbose=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_param_count(cfg, 16) == trainable


@pytest.fixture(scope="module")
def small_smollm2():
    cfg = catalogue_config("smollm2-135m")
    cfg.num_hidden_layers = 2  # SmolLM2's widths, two blocks: real tensors, a few seconds
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float32)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return cfg, model


@pytest.mark.parametrize("method", METHODS)
def test_predicted_equals_measured_on_real_tensors(small_smollm2, method):
    cfg, base = small_smollm2
    model = copy.deepcopy(base)
    if method == "qlora":
        quantize_model(model)
    if method != "full":
        get_peft_model(model, r=16, verbose=False)
    B, T = 2, 32
    pred = estimate_memory(cfg, method, dtype=torch.float32, batch_size=B, seq_len=T, gradient_checkpointing=False)
    held = measure_model_bytes(model)
    step = measure_training_bytes(model, torch.randint(0, cfg.vocab_size, (B, T)))
    # weights, state, gradients and optimizer state: exact to the byte
    assert held["frozen"] + held["trainable"] == pred.weights + pred.adapter
    assert held["quant_state"] == pred.quant_state
    assert step["gradients"] == pred.gradients and step["optimizer"] == pred.optimizer
    # activations: a per-token model of what the forward saves; within 15% of the saved tensors
    assert abs(step["activations"] - pred.activations) <= 0.15 * pred.activations, (step, pred)


def test_qlora_saves_memory_and_the_table_prints():
    cfg = catalogue_config("llama-3-8b")
    full, lora, qlora = (estimate_memory(cfg, m) for m in METHODS)
    assert full.total > lora.total > qlora.total
    assert qlora.weights + qlora.quant_state < 0.4 * lora.weights  # 4.13 bits vs 16 (embedding and head stay 16)
    assert estimate_memory(cfg, "qlora", double_quant=False).quant_state > 3.9 * qlora.quant_state
    text = table(cfg, "llama-3-8b", batch_size=1, seq_len=2048)
    assert "qlora" in text and text.count("\n") == 4
    assert (estimate_memory(cfg, "full", gradient_checkpointing=True).activations
            < estimate_memory(cfg, "full", gradient_checkpointing=False).activations / 5)


def test_bad_input():
    cfg = catalogue_config("smollm2-135m")
    with pytest.raises(ValueError, match="unknown method"):
        estimate_memory(cfg, "qlora4")
    with pytest.raises(ValueError, match="positive"):
        estimate_memory(cfg, "full", seq_len=0)
    with pytest.raises(ValueError, match="unknown target"):
        lora_param_count(cfg, 8, ["qkv"])

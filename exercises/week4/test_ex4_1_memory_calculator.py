import pytest
import torch

from exercises.conftest import exercise
from minilora.memory import estimate_memory, lora_param_count, param_counts
from minilora.models import catalogue_config

pytestmark = pytest.mark.ex4_1
ex = exercise("ex4_1_memory_calculator")
MODELS = ["smollm2-135m", "llama-3-8b", "qwen2-0.5b"]


def test_nf4_bits():
    assert ex.nf4_bits_per_param(64, double_quant=False) == pytest.approx(4.5)
    assert ex.nf4_bits_per_param(64, double_quant=True) == pytest.approx(4.126953125)
    assert ex.nf4_bits_per_param(32, double_quant=False) == pytest.approx(5.0)


@pytest.mark.parametrize("name", MODELS)
def test_full_finetune_matches_the_library(name):
    cfg = catalogue_config(name)
    pred = estimate_memory(cfg, "full", dtype=torch.bfloat16)
    mine = ex.full_finetune_bytes(param_counts(cfg)["total"], weight_bytes=2)
    assert mine["weights"] == pred.weights and mine["gradients"] == pred.gradients
    assert mine["optimizer"] == pred.optimizer
    assert mine["total"] == pred.weights + pred.gradients + pred.optimizer


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("double_quant", [False, True])
def test_qlora_matches_the_library(name, double_quant):
    cfg = catalogue_config(name)
    counts = param_counts(cfg)
    n_lora = lora_param_count(cfg, 16)
    pred = estimate_memory(cfg, "qlora", dtype=torch.bfloat16, double_quant=double_quant)
    mine = ex.training_bytes(counts["total"], counts["block_linear"], n_lora, weight_bytes=2, trainable_bytes=4,
                             double_quant=double_quant)
    assert mine["gradients"] == pred.gradients and mine["optimizer"] == pred.optimizer
    # the library counts whole bytes, partial blocks and one offset per tensor: equal to 0.01%
    assert mine["weights"] == pytest.approx(pred.weights + pred.quant_state + pred.adapter, rel=1e-4)
    assert mine["total"] == pytest.approx(mine["weights"] + mine["gradients"] + mine["optimizer"])

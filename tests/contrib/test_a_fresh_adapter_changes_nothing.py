"""A fresh LoRA adapter changes nothing: B starts at zero, so ΔW = B·A = 0 and the adapted model's logits equal the
base model's exactly — until B moves (lessons/week1_lora.py, section 3; LoraLinear.reset_lora_parameters).

An example of a learner's contribution (CONTRIBUTING.md, "Your first contribution"): one fact from a lesson, pinned
down by a test against the library.
"""
import copy

import torch

from minilora.lora import get_peft_model, lora_layers
from minilora.models import build_model
from minilora.models.registry import catalogue_config, init_weights


def tiny_model():
    config = catalogue_config("smollm2-135m")
    config.num_hidden_layers, config.vocab_size = 1, 64
    model = build_model(config)
    init_weights(model, seed=0)
    return model.eval()


def test_a_fresh_adapter_gives_the_base_models_logits_exactly():
    base = tiny_model()
    adapted = get_peft_model(copy.deepcopy(base), r=8, lora_alpha=16, verbose=False).eval()
    x = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(adapted(x).logits, base(x).logits)


def test_once_b_moves_the_logits_move():
    base = tiny_model()
    adapted = get_peft_model(copy.deepcopy(base), r=8, lora_alpha=16, verbose=False).eval()
    with torch.no_grad():
        lora_layers(adapted)[0][1].lora_B.weight.fill_(0.1)  # (name, layer) pairs
        x = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
        assert not torch.allclose(adapted(x).logits, base(x).logits)

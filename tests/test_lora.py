"""LoRA from scratch, against PEFT: same A/B weights on all 7 projections -> same outputs (rsLoRA on and off);
merge/unmerge; properties (B = 0 changes nothing; the update is linear in alpha); errors for bad arguments."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import FastLanguageModel, LoraLinear
from minilora.lora import TARGET_MODULES, lora_layers, merge_lora, unmerge_lora

R, ALPHA = 4, 8


def _load(directory):
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        model, _ = FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")
    return model


def _randomize_b(model, seed=0):
    """B starts at zero (the adapter is a no-op); give it values so the comparison means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.copy_(0.1 * torch.randn(layer.lora_B.weight.shape, generator=gen))


def _ids(T=12, seed=3):
    return torch.randint(0, 128, (2, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("use_rslora", [False, True], ids=["lora", "rslora"])
def test_lora_matches_peft(tiny_checkpoint, use_rslora, capsys):
    peft = pytest.importorskip("peft")
    directory, hf = tiny_checkpoint("llama")
    model = FastLanguageModel.get_peft_model(_load(directory), r=R, lora_alpha=ALPHA, use_rslora=use_rslora,
                                             use_gradient_checkpointing=False)
    assert "trainable params" in capsys.readouterr().out
    _randomize_b(model)
    layers = lora_layers(model)
    assert len(layers) == 7 * model.config.num_hidden_layers
    assert {name.rsplit(".", 1)[-1] for name, _ in layers} == set(TARGET_MODULES)
    assert layers[0][1].scaling == (ALPHA / math.sqrt(R) if use_rslora else ALPHA / R)

    reference = peft.get_peft_model(hf, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                        target_modules=TARGET_MODULES, use_rslora=use_rslora))
    with torch.no_grad():
        for name, layer in layers:  # copy our A and B into PEFT's layer of the same name
            theirs = reference.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(layer.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(layer.lora_B.weight)
    assert model.num_parameters(trainable_only=True) == sum(
        p.numel() for p in reference.parameters() if p.requires_grad)

    x = _ids()
    ours, theirs = model(x, labels=x), reference(input_ids=x, labels=x)
    assert (ours.logits - theirs.logits).abs().max().item() <= 1e-4
    ours.loss.backward()
    theirs.loss.backward()
    name, layer = layers[5]
    peft_layer = reference.base_model.model.get_submodule(name)
    assert torch.allclose(layer.lora_A.weight.grad, peft_layer.lora_A["default"].weight.grad, atol=1e-5)
    assert torch.allclose(layer.lora_B.weight.grad, peft_layer.lora_B["default"].weight.grad, atol=1e-5)


def test_get_peft_model_freezes_the_base_and_counts(tiny_checkpoint):
    directory, _ = tiny_checkpoint("qwen2")
    model = FastLanguageModel.get_peft_model(_load(directory), r=R, verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    expected = sum(R * (m.in_features + m.out_features) for _, m in lora_layers(model))
    assert model.num_parameters(trainable_only=True) == expected
    assert model.gradient_checkpointing == "offload"  # Unsloth's default "unsloth" mode
    x = _ids()
    FastLanguageModel.for_training(model)
    assert model.training
    model(x, labels=x).loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    FastLanguageModel.for_inference(model)
    assert not model.training


def test_gradient_checkpointing_modes_give_the_same_gradients(tiny_checkpoint):
    directory, _ = tiny_checkpoint("mistral", sliding_window=6)
    x = _ids(T=10)
    grads = {}
    for mode in (False, True, "unsloth"):
        model = FastLanguageModel.get_peft_model(_load(directory), r=R, use_gradient_checkpointing=mode,
                                                 verbose=False)
        _randomize_b(model)
        FastLanguageModel.for_training(model)
        model(x, labels=x).loss.backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert torch.allclose(grads[False], grads[True], atol=1e-6)
    assert torch.allclose(grads[False], grads["unsloth"], atol=1e-6)


def test_merge_then_unmerge_restores_the_weights(tiny_checkpoint):
    directory, _ = tiny_checkpoint("llama")
    model = FastLanguageModel.get_peft_model(_load(directory), r=R, lora_alpha=ALPHA, verbose=False)
    _randomize_b(model, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = _ids()
    with torch.no_grad():
        adapted = model(x).logits
        merge_lora(model)
        assert all(layer.merged for _, layer in lora_layers(model))
        w = model.model.layers[0].self_attn.q_proj.base_layer.weight
        assert not torch.allclose(w, before["model.layers.0.self_attn.q_proj.base_layer.weight"])
        merged = model(x).logits
        unmerge_lora(model)
        restored = model(x).logits
    assert torch.allclose(merged, adapted, atol=1e-5)  # the merged weight computes the same function
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n], atol=1e-6), n
    assert torch.allclose(restored, adapted, atol=1e-6)


# --- properties of one LoraLinear ------------------------------------------------------------------------------
shapes = st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 8), st.booleans())


def _layer(in_f, out_f, r, alpha, rslora, seed):
    torch.manual_seed(seed)
    return LoraLinear(torch.nn.Linear(in_f, out_f), r=r, lora_alpha=alpha, use_rslora=rslora)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, alpha=st.floats(0.5, 64), seed=st.integers(0, 1000))
def test_b_zero_at_init_leaves_outputs_unchanged(shape, alpha, seed):
    in_f, out_f, r, rslora = shape
    layer = _layer(in_f, out_f, r, alpha, rslora, seed)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    x = torch.randn(3, 5, in_f)
    assert torch.equal(layer(x), layer.base_layer(x))


@settings(max_examples=20, deadline=None)
@given(shape=shapes, alpha=st.floats(0.25, 64), seed=st.integers(0, 1000))
def test_update_is_linear_in_alpha(shape, alpha, seed):
    in_f, out_f, r, rslora = shape
    one = _layer(in_f, out_f, r, 1.0, rslora, seed)
    torch.nn.init.normal_(one.lora_B.weight)
    scaled = LoraLinear(one.base_layer, r=r, lora_alpha=alpha, use_rslora=rslora)
    with torch.no_grad():
        scaled.lora_A.weight.copy_(one.lora_A.weight)
        scaled.lora_B.weight.copy_(one.lora_B.weight)
        x = torch.randn(4, in_f)
        base = one.base_layer(x)
        update_1, update_alpha = one(x) - base, scaled(x) - base
    assert torch.allclose(update_alpha, alpha * update_1, rtol=1e-4, atol=1e-4 * alpha)
    # and the merged weight is W + (alpha / r) B A (alpha / sqrt(r) with rsLoRA)
    expected = (alpha / math.sqrt(r) if rslora else alpha / r) * one.lora_B.weight @ one.lora_A.weight
    assert torch.allclose(scaled.delta_weight(), expected, atol=1e-5)


# --- bad arguments ---------------------------------------------------------------------------------------------
def test_target_module_that_does_not_exist(tiny_checkpoint):
    directory, _ = tiny_checkpoint("llama")
    model = _load(directory)
    with pytest.raises(ValueError, match=r"\['qkv_proj'\] do not exist.*q_proj"):
        FastLanguageModel.get_peft_model(model, target_modules=["q_proj", "qkv_proj"], verbose=False)
    assert not lora_layers(model)  # nothing was half-applied
    with pytest.raises(ValueError, match="use_gradient_checkpointing"):
        FastLanguageModel.get_peft_model(model, use_gradient_checkpointing="sometimes", verbose=False)
    with pytest.raises(ValueError, match="bias='none'"):
        FastLanguageModel.get_peft_model(model, bias="all", verbose=False)
    with pytest.raises(ValueError, match="rank r"):
        FastLanguageModel.get_peft_model(model, r=0, verbose=False)
    FastLanguageModel.get_peft_model(model, r=R, verbose=False)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        FastLanguageModel.get_peft_model(model, r=R, verbose=False)

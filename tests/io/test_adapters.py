"""`load_adapter` honours the adapter's own lora_alpha / use_rslora even when the model already has LoRA layers,
refuses what it cannot honour, and leaves the model exactly as it was when it refuses."""
import json

import pytest
import torch
from helpers.train import randomize_lora, tiny_model

from minilora.io.adapters import AdapterMismatchError, load_adapter, save_adapter
from minilora.lora import get_peft_model, lora_layers


def adapted(alpha, rslora=False, r=8, targets=None, seed=0):
    model = get_peft_model(tiny_model(seed=0), r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=targets,
                           verbose=False)
    return randomize_lora(model, seed=seed)


def logits(model):
    with torch.no_grad():
        return model(torch.arange(1, 9)[None]).logits


@pytest.mark.parametrize("alpha, rslora", [(32, False), (16, True)])
def test_loading_onto_a_model_with_lora_uses_the_adapters_scaling(tmp_path, alpha, rslora):
    source = adapted(alpha, rslora)
    save_adapter(source, str(tmp_path / "a"))
    target = adapted(16, False, seed=5)  # LoRA already attached, with other settings
    load_adapter(target, str(tmp_path / "a"))
    torch.testing.assert_close(logits(target), logits(source))
    assert target.peft_config["lora_alpha"] == alpha and target.peft_config["use_rslora"] == rslora


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: p.requires_grad for n, p in model.named_parameters()}, getattr(model, "peft_config", None))


def assert_unchanged(model, before):
    state, grads, cfg = snapshot(model)
    assert state.keys() == before[0].keys()
    for k in state:
        assert torch.equal(state[k], before[0][k]), k
    assert grads == before[1] and cfg == before[2]


def test_a_refused_adapter_leaves_a_plain_model_unchanged(tmp_path):
    save_adapter(adapted(16), str(tmp_path / "a"))
    wrong = tiny_model(layers=1)
    before = snapshot(wrong)
    with pytest.raises(AdapterMismatchError):
        load_adapter(wrong, str(tmp_path / "a"))
    assert not lora_layers(wrong)
    assert_unchanged(wrong, before)


def test_a_refused_adapter_leaves_an_adapted_model_unchanged(tmp_path):
    save_adapter(adapted(16, r=4), str(tmp_path / "a"))
    target = adapted(16, r=8, seed=3)
    before = snapshot(target)
    with pytest.raises(AdapterMismatchError):
        load_adapter(target, str(tmp_path / "a"))
    assert_unchanged(target, before)


def test_per_module_patterns_are_refused_not_ignored(tmp_path):
    save_adapter(adapted(16), str(tmp_path / "a"))
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["alpha_pattern"] = {"q_proj": 64}
    cfg_path.write_text(json.dumps(cfg))
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError, match="alpha_pattern"):
        load_adapter(model, str(tmp_path / "a"))
    assert_unchanged(model, before)


# --- values of the wrong type or range, and broken numbers: one line naming the file and the key ---------------
@pytest.mark.parametrize("key, value, message", [
    ("lora_alpha", 1e308, "lora_alpha=1e\\+308 with r=8 scales the update"),
    ("lora_alpha", float("nan"), "'lora_alpha' is nan"),
    ("r", 2.5, "'r' is 2.5"),
    ("r", 0, "'r' is 0"),
    ("target_modules", 5, "'target_modules' is 5"),
    ("use_rslora", "yes", "'use_rslora' is 'yes'"),
    ("use_dora", "no", "'use_dora' is 'no'"),
    ("lora_dropout", "0.1", "'lora_dropout' is '0.1'"),
])
def test_adapter_config_values_are_checked_with_file_and_key(tmp_path, key, value, message):
    """lora_alpha 1e308 loaded and gave NaN logits; a string use_rslora was taken as true; an integer
    target_modules and a string lora_dropout ended in TypeErrors naming no file or key."""
    save_adapter(adapted(16), str(tmp_path / "a"))
    path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(AdapterMismatchError, match=f"adapter_config.json.*{message}"):
        load_adapter(model, str(tmp_path / "a"))
    assert_unchanged(model, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_adapter_with_non_finite_weights_is_refused_with_the_tensor_name(tmp_path, bad):
    from safetensors.torch import load_file, save_file
    save_adapter(adapted(16), str(tmp_path / "a"))
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    tensors[key][3, 2] = bad
    save_file(tensors, weights, metadata={"format": "pt"})
    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"adapter_model.safetensors: tensor '{key}' holds {bad}"):
        load_adapter(model, str(tmp_path / "a"))
    assert_unchanged(model, before)


def test_integer_adapter_weights_are_refused_not_converted(tmp_path):
    from safetensors.torch import load_file, save_file
    save_adapter(adapted(16), str(tmp_path / "a"))
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = (tensors[key] * 1000).to(torch.int16)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(AdapterMismatchError, match=rf"tensor '{key}' is stored as torch.int16"):
        load_adapter(tiny_model(), str(tmp_path / "a"))

"""Inputs users pass by hand get errors that name the problem: target_modules as a string (PEFT's meaning: a
regular expression matched against full module names), a non-linear target, a config.json number written as a
string, NF4 on the meta device, and .jsonl errors that point at the right line."""
import json
import math

import pytest
import torch
from helpers_train import tiny_config, tiny_model

from minilora import FastLanguageModel
from minilora.lora import get_peft_model, lora_layers
from minilora.models import ModelConfig
from minilora.train import read_records
from minilora.train.data import DataError


def adapted_names(model):
    return sorted(name for name, _ in lora_layers(model))


@pytest.mark.parametrize("peft", [get_peft_model, FastLanguageModel.get_peft_model])
def test_target_modules_as_a_regular_expression(peft):
    kw = dict(verbose=False) if peft is get_peft_model else dict(verbose=False, use_gradient_checkpointing=False)
    model = peft(tiny_model(), target_modules=r".*\.(q_proj|v_proj)", **kw)
    assert adapted_names(model) == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    model = peft(tiny_model(), target_modules=r"model\.layers\.0\.mlp\.down_proj", **kw)
    assert adapted_names(model) == ["model.layers.0.mlp.down_proj"]


def test_a_bare_name_string_matches_like_peft():
    """PEFT full-matches a string against the whole module name, so "q_proj" matches no module of a real model:
    refused with the two ways to say what was meant — not split into letters."""
    model = tiny_model()
    with pytest.raises(ValueError, match=r"regular expression.*\['q_proj'\]"):
        get_peft_model(model, target_modules="q_proj", verbose=False)
    assert not lora_layers(model)


def test_all_linear_and_dotted_suffixes():
    model = get_peft_model(tiny_model(), target_modules="all-linear", verbose=False)
    assert len(lora_layers(model)) == 14 and not any(n.endswith("lm_head") for n in adapted_names(model))
    model = get_peft_model(tiny_model(), target_modules=["self_attn.o_proj"], verbose=False)
    assert adapted_names(model) == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]


def test_embedding_target_is_refused_clearly():
    model = tiny_model()
    with pytest.raises(ValueError, match="embed_tokens.*Embedding.*linear layers"):
        get_peft_model(model, target_modules=["embed_tokens"], verbose=False)
    assert not lora_layers(model)


@pytest.mark.parametrize("key, value", [("hidden_size", "64"), ("num_hidden_layers", 2.5), ("rms_norm_eps", "1e-5"),
                                        ("tie_word_embeddings", "yes"), ("vocab_size", True), ("rope_theta", -1.0),
                                        ("num_attention_heads", 0)])
def test_config_values_of_the_wrong_type_name_the_key(key, value):
    d = tiny_config().to_hf_dict()
    d[key] = value
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        ModelConfig.from_dict(d)


def test_nf4_on_the_meta_device_is_refused():
    from minilora.linear4bit import quantize_model
    from minilora.models.registry import model_class
    from minilora.quant.blockwise import quantize_nf4
    with pytest.raises(ValueError, match="meta device"):
        quantize_nf4(torch.empty(64, 64, device="meta"))
    with torch.device("meta"):
        model = model_class("llama")(tiny_config())
    assert next(model.parameters()).is_meta
    with pytest.raises(ValueError, match="meta device"):
        quantize_model(model)


def test_jsonl_errors_name_the_line(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    p = tmp_path / "d.jsonl"
    p.write_text(f"{good}\n\n{good}\n{{broken\n")
    with pytest.raises(DataError, match=r"line 4\b"):
        read_records(str(p))
    p.write_text(f"{good}\n\n[1, 2]\n")
    with pytest.raises(DataError, match=r"line 3\b"):
        read_records(str(p))


@pytest.mark.parametrize("kw", [dict(weight_decay=math.nan), dict(weight_decay=-0.1), dict(max_grad_norm=-1.0),
                                dict(adam_beta1=1.0), dict(adam_beta2=math.inf), dict(adam_epsilon=0.0),
                                dict(learning_rate=math.nan), dict(warmup_steps=-1), dict(save_steps=-1)])
def test_training_arguments_refuse_values_out_of_range(kw):
    from minilora.train import TrainingArguments
    with pytest.raises(ValueError, match=next(iter(kw))):
        TrainingArguments(**kw)

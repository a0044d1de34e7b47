"""Inputs users pass by hand get errors that name the problem: target_modules as a string (PEFT's meaning: a
regular expression matched against full module names), a non-linear target, a config.json number written as a
string, NF4 on the meta device, and .jsonl errors that point at the right line."""
import json
import math

import pytest
import torch
from helpers.train import tiny_config, tiny_model

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


# --- token ids outside the vocabulary: refused with the position, on every path --------------------------------
@pytest.mark.parametrize("bad", [10_000, -3, -100])
def test_input_ids_outside_the_vocabulary_are_refused_clearly(bad):
    """The embedding said "index out of range in self"; now the id, its position and the vocabulary size."""
    model = tiny_model()
    ids = torch.tensor([[1, 2, 3], [4, bad, 5]])
    with pytest.raises(ValueError, match=rf"input_ids holds {bad} at position \(1, 1\), outside \[0, "):
        model(ids)


def test_a_tokenizer_larger_than_the_embedding_table_is_refused_on_load(tmp_path):
    from helpers.train import tiny_tokenizer

    from minilora.save import save_pretrained_merged
    tok = tiny_tokenizer()
    save_pretrained_merged(tiny_model(vocab_size=len(tok) - 50), tok, str(tmp_path / "m"), save_method="merged_16bit")
    with pytest.raises(ValueError, match=rf"token ids up to {len(tok) - 1}, but the model's embedding table has "
                                         rf"{len(tok) - 50} rows"):
        FastLanguageModel.from_pretrained(tmp_path / "m", device="cpu")


def _train_one_step(tmp_path, examples, vocab_size=64, device="cpu"):
    from minilora.train import Trainer, TrainingArguments
    model = get_peft_model(tiny_model(vocab_size=vocab_size).to(device), r=4, verbose=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=1,
                             progress_bar=False, seed=1)
    try:
        Trainer(model, args, examples).train()
    finally:
        after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        assert all(torch.equal(before[n], after[n]) for n in before), "a refused batch must not train"


@pytest.mark.parametrize("where, bad, message", [
    ("labels", 64, r"labels holds 64 at position \([01], 3\), outside \[0, 64\) or -100"),
    ("labels", -7, r"labels holds -7 at position \([01], 3\)"),
    ("input_ids", 99, r"input_ids holds 99 at position \([01], 3\)"),
    ("input_ids", -1, r"input_ids holds -1 at position \([01], 3\)"),
])
def test_the_trainer_refuses_ids_outside_the_vocabulary_before_the_step(tmp_path, where, bad, message):
    """Checked on the host, where the trainer builds its batches (no GPU sync): on a GPU an out-of-range label was
    trained on silently, and an input id ends the process with a device-side assert."""
    from minilora.train import Example, TrainingError
    ids = [5, 6, 7, 8, 9, 10]
    example = Example(list(ids), [-100, -100, 7, 8, 9, 10])
    getattr(example, where)[3] = bad
    examples = [example, Example(list(ids), [-100, -100, 7, 8, 9, 10])]
    with pytest.raises(TrainingError, match=rf"step 1, micro-batch 1: {message}"):
        _train_one_step(tmp_path, examples)


def test_the_triton_loss_of_an_out_of_range_label_is_nan_not_a_read_past_the_row(monkeypatch):
    """On a GPU the host does not read label values (a sync); the kernels used to load the logit at ``row + label``
    — past the row, another token's logit — and return a plausible loss. Now they return NaN, which the trainer's
    one read of the loss refuses. Simulated here by switching the host check off, as on a GPU."""
    pytest.importorskip("triton")
    from minilora.kernels import cross_entropy as ce
    from minilora.kernels.fused_linear_ce import fused_linear_cross_entropy_fast
    monkeypatch.setattr(ce, "host_checks", lambda t: False)
    g = torch.Generator().manual_seed(0)
    logits, hidden, weight = torch.randn(4, 40, generator=g), torch.randn(4, 16, generator=g), torch.randn(40, 16)
    for bad in (40, -2):
        labels = torch.tensor([bad, 3, -100, 5])
        assert torch.isnan(ce.cross_entropy_fast(logits.clone(), labels))
        assert torch.isnan(fused_linear_cross_entropy_fast(hidden, weight, labels, chunk_size=2))
        trained = hidden.clone().requires_grad_()  # with a gradient: the one-launch loss-and-gradient kernel
        assert torch.isnan(fused_linear_cross_entropy_fast(trained, weight, labels, chunk_size=2))
    assert torch.isfinite(ce.cross_entropy_fast(logits.clone(), torch.tensor([39, 3, -100, 5])))


@pytest.mark.gpu
def test_on_the_gpu_a_bad_label_is_a_nan_loss_without_a_sync_and_the_trainer_refuses_it(tmp_path):
    from minilora.train import Example, TrainingError
    model = tiny_model(vocab_size=64).cuda()
    ids = torch.randint(3, 64, (2, 16), device="cuda")
    labels = ids.clone()
    labels[1, 5] = 64
    for fused in (False, True):  # the Triton cross-entropy and the fused linear + cross-entropy
        model(ids, labels=labels, return_logits=not fused)  # warm-up: compiles the kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = model(ids, labels=labels, return_logits=not fused).loss
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isnan(loss), fused
    bad = Example([5, 6, 7, 8, 9, 10], [-100, -100, 7, 64, 9, 10])
    with pytest.raises(TrainingError, match="labels holds 64"):
        _train_one_step(tmp_path, [bad, bad], device="cuda")

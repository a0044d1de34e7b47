"""One record per model family: the built-in families save a directory transformers opens as the same class with
equal logits, and a family registered here (a small subclass) saves and reloads as itself."""
import json

import pytest
import torch
from helpers.train import tiny_config, tiny_tokenizer

from minilora import FastLanguageModel
from minilora.io.gguf import GGUFError, config_from_metadata, write_gguf
from minilora.models import MODEL_TYPES, LlamaForCausalLM, ModelConfig, build_model, register_model
from minilora.models.registry import init_weights
from minilora.save import save_pretrained_merged

transformers = pytest.importorskip("transformers")


@pytest.fixture
def registry():
    """The families a test registers are forgotten after it (it registers new names only)."""
    builtin = set(MODEL_TYPES)
    yield
    for model_type in set(MODEL_TYPES) - builtin:
        del MODEL_TYPES[model_type]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.filterwarnings("ignore:.*has no tokenizer.json")
@pytest.mark.parametrize("model_type, overrides", [("llama", {}), ("mistral", {"sliding_window": 4}),
                                                   ("qwen2", {"tie_word_embeddings": True})])
def test_builtin_family_saves_what_transformers_opens_as_that_family(tiny_checkpoint, tmp_path, model_type,
                                                                      overrides):
    directory, hf = tiny_checkpoint(model_type, **overrides)
    ours, _ = FastLanguageModel.from_pretrained(str(directory), device="cpu")
    assert type(ours) is MODEL_TYPES[model_type].model_class
    save_pretrained_merged(ours, None, str(tmp_path / "saved"), dtype="float32")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == model_type
    assert config["architectures"] == [type(hf).__name__]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"), dtype=torch.float32)
    assert type(reloaded) is type(hf)
    ids = torch.randint(0, hf.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(reloaded.eval(), ids), logits(hf, ids), atol=1e-5, rtol=1e-5)


class HalvedLogitsForCausalLM(LlamaForCausalLM):
    """A family of its own: Llama whose logits are scaled by a factor its config.json carries."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * self.config.extra["logit_factor"]
        return out


def from_hf(d: dict) -> dict:
    d.setdefault("logit_factor", 0.5)  # a config.json without the key means the family's default
    return d


def to_hf(d: dict) -> dict:
    d["written_by_the_family"] = True
    return d


def test_registered_family_saves_and_reloads_as_itself(registry, tmp_path):
    record = register_model("halved", HalvedLogitsForCausalLM, hf_architecture="HalvedForCausalLM",
                            config_from_hf=from_hf, config_to_hf=to_hf)
    assert MODEL_TYPES["halved"] is record and record.gguf_architecture is None
    model = build_model(ModelConfig.from_dict({**tiny_config().to_dict(), "model_type": "halved"}))
    init_weights(model, std=0.05, seed=3)
    assert type(model) is HalvedLogitsForCausalLM and model.config.extra["logit_factor"] == 0.5
    save_pretrained_merged(model, tiny_tokenizer(), str(tmp_path / "halved"), dtype="float32")
    config = json.loads((tmp_path / "halved" / "config.json").read_text())
    assert config["model_type"] == "halved" and config["architectures"] == ["HalvedForCausalLM"]
    assert config["written_by_the_family"] is True and config["logit_factor"] == 0.5
    reloaded, _ = FastLanguageModel.from_pretrained(str(tmp_path / "halved"), device="cpu")
    assert type(reloaded) is HalvedLogitsForCausalLM
    ids = torch.randint(0, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(reloaded, ids), logits(model.eval(), ids), atol=1e-6, rtol=1e-6)


def test_default_architecture_name_is_the_class(registry):
    assert register_model("halved", HalvedLogitsForCausalLM).hf_architecture == "HalvedLogitsForCausalLM"
    config = ModelConfig(**{**tiny_config().to_dict(), "model_type": "halved"})
    assert config.to_hf_dict()["architectures"] == ["HalvedLogitsForCausalLM"]


def test_gguf_reads_the_family_records(registry):
    metadata = {"general.architecture": "halved_arch", "halved_arch.attention.head_count": 4,
                "halved_arch.embedding_length": 64, "halved_arch.feed_forward_length": 96,
                "halved_arch.block_count": 2, "halved_arch.vocab_size": 128}
    with pytest.raises(GGUFError, match="'halved_arch' is not supported; minilora reads llama, mistral, qwen2"):
        config_from_metadata(metadata)
    register_model("halved", HalvedLogitsForCausalLM, gguf_architecture="halved_arch")
    assert config_from_metadata(metadata)["model_type"] == "halved"
    with pytest.raises(ValueError, match="'llama' already belongs to model_type 'llama'"):
        register_model("other", HalvedLogitsForCausalLM, gguf_architecture="llama")


def test_gguf_export_refuses_a_family_without_llama_layout(registry, tmp_path):
    register_model("halved", HalvedLogitsForCausalLM)
    config = ModelConfig(**{**tiny_config().to_dict(), "model_type": "halved"})
    with pytest.raises(ValueError, match="plain llama architecture; this model is 'halved'"):
        write_gguf(tmp_path / "m.gguf", {}, config, tiny_tokenizer())
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("kwargs, error", [
    ({"model_type": "", "cls": HalvedLogitsForCausalLM}, "non-empty string"),
    ({"model_type": "x", "cls": torch.nn.Linear}, "subclass of LlamaForCausalLM"),
    ({"model_type": "x", "cls": HalvedLogitsForCausalLM, "hf_architecture": 3}, "transformers class name"),
    ({"model_type": "x", "cls": HalvedLogitsForCausalLM, "config_to_hf": "keys"}, "not callable"),
])
def test_bad_registrations_are_refused(registry, kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        register_model(**kwargs)
    assert "x" not in MODEL_TYPES


def test_unknown_family_is_named_when_saving():
    with pytest.raises(ValueError, match="unknown model_type 'nope'; supported: llama, mistral, qwen2"):
        ModelConfig(model_type="nope").to_hf_dict()

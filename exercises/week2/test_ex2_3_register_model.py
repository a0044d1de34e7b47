import pytest
import torch

from exercises.conftest import exercise
from minilora.models import MODEL_TYPES, LlamaForCausalLM, ModelConfig, build_model, model_class

pytestmark = pytest.mark.ex2_3
ex = exercise("ex2_3_register_model")


def tiny(tied: bool, model_type: str = "gemma_like") -> ModelConfig:
    return ModelConfig(model_type=model_type, vocab_size=40, hidden_size=16, intermediate_size=24,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)


@pytest.fixture
def registry():
    """Whatever a test registers, leave the registry as other tests expect it."""
    before = dict(MODEL_TYPES)
    yield
    MODEL_TYPES.clear()
    MODEL_TYPES.update(before)


def test_scaled_embedding_multiplies_by_sqrt_dim():
    emb = ex.ScaledEmbedding(10, 9)
    ids = torch.tensor([[0, 3, 9]])
    torch.testing.assert_close(emb(ids), emb.weight[ids] * 3.0)


def test_register_makes_the_type_buildable(registry):
    with pytest.raises(ValueError, match="gemma_like"):  # unknown before registering ...
        model_class("gemma_like")
    ex.register()  # ... known after
    assert model_class("gemma_like") is ex.GemmaLikeForCausalLM
    model = build_model(tiny(tied=True))
    assert type(model) is ex.GemmaLikeForCausalLM and isinstance(model, LlamaForCausalLM)
    assert isinstance(model.model.embed_tokens, ex.ScaledEmbedding)


def test_overrides_only_what_differs(registry):
    ex.register()
    own = set(vars(ex.GemmaLikeForCausalLM))
    assert "forward" not in own, "reuse LlamaForCausalLM.forward: only the embedding differs"
    assert "__init__" in own, "swap the embedding in __init__"
    build_model(tiny(tied=False))


def test_tied_head_stays_tied(registry):
    ex.register()
    model = build_model(tiny(tied=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == build_model(tiny(tied=True, model_type="llama")).num_parameters()


@pytest.mark.parametrize("tied", [False, True])
def test_logits_equal_llama_fed_scaled_embeddings(registry, tied):
    ex.register()
    torch.manual_seed(0)
    ours = build_model(tiny(tied))
    llama = LlamaForCausalLM(tiny(tied, "llama"))
    llama.load_state_dict(ours.state_dict())  # same names, same shapes: the checkpoint format is unchanged
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        # scale the input table but keep the output head as it was (untie for the reference)
        llama.lm_head.weight = torch.nn.Parameter(ours.lm_head.weight.detach().clone())
        llama.model.embed_tokens.weight.mul_(16 ** 0.5)
        torch.testing.assert_close(ours(ids).logits, llama(ids).logits, rtol=1e-5, atol=1e-5)

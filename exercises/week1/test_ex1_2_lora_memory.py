import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exercises.conftest import exercise
from minilora.lora import get_peft_model
from minilora.models import ModelConfig, build_model, catalogue_config

pytestmark = pytest.mark.ex1_2
ex = exercise("ex1_2_lora_memory")

configs = st.builds(
    lambda layers, heads, groups, hd, ffn, vocab, tied, bias: ModelConfig(
        num_hidden_layers=layers, num_attention_heads=heads * groups, num_key_value_heads=heads, head_dim=hd,
        hidden_size=8 * heads, intermediate_size=ffn, vocab_size=vocab, tie_word_embeddings=tied,
        qkv_bias=bias == "qkv", attention_bias=bias == "attention"),
    layers=st.integers(1, 3), heads=st.integers(1, 3), groups=st.integers(1, 3), hd=st.sampled_from([2, 4, 8]),
    ffn=st.integers(1, 40), vocab=st.integers(2, 50), tied=st.booleans(),
    bias=st.sampled_from([None, "qkv", "attention"]))


def meta_model(config):
    return build_model(config, device="meta")  # shapes only: no memory is allocated


@settings(max_examples=15, deadline=None)
@given(config=configs)
def test_projection_shapes_match_the_model(config):
    layer = meta_model(config).model.layers[0]
    modules = {**dict(layer.self_attn.named_children()), **dict(layer.mlp.named_children())}
    expected = {name: (modules[name].in_features, modules[name].out_features) for name in ex.PROJECTIONS}
    assert ex.projection_shapes(config) == expected


@settings(max_examples=15, deadline=None)
@given(config=configs)
def test_model_parameter_count_matches_the_model(config):
    assert ex.model_parameter_count(config) == meta_model(config).num_parameters()


@settings(max_examples=15, deadline=None)
@given(config=configs, r=st.integers(1, 8),
       targets=st.lists(st.sampled_from(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"]), min_size=1, max_size=7, unique=True))
def test_lora_count_matches_get_peft_model(config, r, targets):
    model = get_peft_model(meta_model(config), r=r, target_modules=targets, random_state=None, verbose=False)
    assert ex.lora_parameter_count(config, r, targets) == model.num_parameters(trainable_only=True)


@pytest.mark.parametrize("bias", ["qkv_bias", "attention_bias"])
def test_model_parameter_count_counts_each_kind_of_attention_bias(bias):
    """qkv_bias (Qwen2) puts a bias on q, k and v; attention_bias (Llama's option) on q, k, v and o."""
    config = ModelConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                         hidden_size=16, intermediate_size=24, vocab_size=30, **{bias: True})
    plain = ModelConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                        hidden_size=16, intermediate_size=24, vocab_size=30)
    per_layer = 16 + 8 + 8 + (16 if bias == "attention_bias" else 0)  # q (nh·hd) + k, v (nkv·hd) [+ o (C)]
    assert ex.model_parameter_count(config) - ex.model_parameter_count(plain) == 2 * per_layer, (
        f"with {bias}=True the model gains {2 * per_layer} bias parameters over its 2 layers")


def test_smollm2_all_seven_projections_rank_16():
    # SmolLM2-135M: C 576, ffn 1536, 9 heads of 64, 3 KV heads, 30 layers
    per_layer = 16 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576))
    assert ex.lora_parameter_count(catalogue_config("smollm2-135m"), 16) == 30 * per_layer


@given(frozen=st.integers(0, 10**10), trainable=st.integers(0, 10**9), w=st.sampled_from([1, 2, 4]),
       g=st.sampled_from([2, 4]), o=st.sampled_from([0, 4, 8]))
@settings(max_examples=25, deadline=None)
def test_training_bytes(frozen, trainable, w, g, o):
    assert ex.training_bytes(frozen, trainable, w, g, o) == frozen * w + trainable * (w + g + o)


def test_training_bytes_defaults_are_bf16_with_adamw_in_the_parameter_dtype():
    assert ex.training_bytes(0, 1) == 2 + 2 + 4  # weight + gradient + two bf16 moments (as torch.optim.AdamW)
    assert ex.training_bytes(1, 0) == 2  # a frozen weight costs only itself

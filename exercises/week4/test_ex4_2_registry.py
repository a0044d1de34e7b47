import pytest

from exercises.conftest import exercise
from minilora.models import CATALOGUE, catalogue_config

pytestmark = pytest.mark.ex4_2
ex = exercise("ex4_2_registry")

# parameter counts the model publishers list for their checkpoints (safetensors metadata on the model pages)
PUBLISHED = {"smollm2-135m": 134_515_008, "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
             "qwen2-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_checkpoint(name):
    assert ex.parameter_count(name) == PUBLISHED[name]


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-3-8b", "qwen2-0.5b"])
def test_breakdown_adds_up_and_follows_the_config(name):
    parts = ex.parameter_breakdown(name)
    assert set(parts) == set(ex.GROUPS)
    assert sum(parts.values()) == PUBLISHED[name]
    c = catalogue_config(name)
    assert parts["embedding"] == c.vocab_size * c.hidden_size
    assert parts["lm_head"] == (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    assert parts["norms"] == (2 * c.num_hidden_layers + 1) * c.hidden_size
    assert parts["mlp"] == 3 * c.num_hidden_layers * c.hidden_size * c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    bias = (q + 2 * kv) if c.qkv_bias else 0
    assert parts["attention"] == c.num_hidden_layers * (2 * c.hidden_size * q + 2 * c.hidden_size * kv + bias)


def test_table_lists_the_whole_catalogue_smallest_first():
    rows = ex.catalogue_table()
    assert {row["name"] for row in rows} == set(CATALOGUE)
    assert [row["params"] for row in rows] == sorted(row["params"] for row in rows)
    first = rows[0]
    assert first == {"name": "smollm2-135m", "repo": CATALOGUE["smollm2-135m"][0], "model_type": "llama",
                     "params": PUBLISHED["smollm2-135m"]}


def test_table_search():
    assert [row["name"] for row in ex.catalogue_table("qwen2")] == ["qwen2-0.5b", "qwen2-1.5b"]
    assert [row["model_type"] for row in ex.catalogue_table("mistral")] == ["mistral"]
    assert ex.catalogue_table("no such model") == []

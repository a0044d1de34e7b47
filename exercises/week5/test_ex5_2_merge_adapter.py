import pytest
import torch

from exercises.conftest import exercise

pytestmark = pytest.mark.ex5_2
ex = exercise("ex5_2_merge_adapter")


def test_merged_weight_formula_and_rslora():
    g = torch.Generator().manual_seed(0)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    torch.testing.assert_close(ex.merged_weight(W, A, B, 8, 2), W + 4 * B @ A)
    torch.testing.assert_close(ex.merged_weight(W, A, B, 8, 2, use_rslora=True), W + 8 / 2 ** 0.5 * B @ A)
    assert ex.merged_weight(W.half(), A, B, 8, 2).dtype == torch.float16


def test_merge_matches_minilora_save():
    """The merged state dict equals what minilora writes for a tiny model with a random adapter."""
    from minilora.io.adapters import adapter_state_dict
    from minilora.lora import get_peft_model
    from minilora.models import ModelConfig, build_model
    from minilora.save import merged_state_dict
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                    num_attention_heads=2))
    base = {k: v.clone() for k, v in merged_state_dict(model, torch.float32).items()}
    get_peft_model(model, r=4, lora_alpha=8, verbose=False)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    merged = ex.merge_state_dict(base, adapter_state_dict(model), 8, 4)
    want = merged_state_dict(model, torch.float32)
    assert set(merged) == set(want)
    for k in want:
        torch.testing.assert_close(merged[k], want[k], rtol=1e-5, atol=1e-5)


def test_adapter_for_another_model_is_refused():
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 3)}
    adapter = {"base_model.model.model.layers.9.mlp.up_proj.lora_A.weight": torch.zeros(1, 3),
               "base_model.model.model.layers.9.mlp.up_proj.lora_B.weight": torch.zeros(4, 1)}
    with pytest.raises(KeyError, match="layers.9"):
        ex.merge_state_dict(base, adapter, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merged_in_float32_then_rounded_once(dtype):
    """The update is small next to W: added in 16-bit it would be rounded twice (once alone, once in the sum)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(64, 48, generator=g).to(dtype)
    A, B = torch.randn(4, 48, generator=g) * 0.05, torch.randn(64, 4, generator=g) * 0.05
    merged = ex.merged_weight(W, A.to(dtype), B.to(dtype), 8, 4)
    assert merged.dtype == dtype
    once = (W.float() + 2.0 * (B.to(dtype).float() @ A.to(dtype).float())).to(dtype)
    off = int((merged != once).sum())
    assert off == 0, (f"{off} of {W.numel()} merged weights differ from W + scaling·B@A computed in float32 and "
                      f"rounded once to {dtype}: cast W, A and B to float32 first, then back to W's dtype at the end")


def test_the_base_state_dict_is_left_unchanged():
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 3)}
    adapter = {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.ones(1, 3),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": torch.ones(4, 1)}
    merged = ex.merge_state_dict(base, adapter, 1, 1)
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], torch.ones(4, 3))
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"], torch.zeros(4, 3)), (
        "merge_state_dict changed the base state dict it was given: return a NEW dict (dict(base), then replace "
        "the merged entries)")

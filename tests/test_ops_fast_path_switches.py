"""`ops.without(...)`: each fast path switched off alone takes its PyTorch route and the model computes the same
(the ablation of the "+ triton" stage in benchmarks/bench_frontier.py relies on it).

On CPU the Triton path runs in the interpreter (conftest sets TRITON_INTERPRET=1); the `gpu`-marked copies compiled.
Tolerance: fp32, one forward + backward — losses and LoRA gradients agree to 1e-4 relative with any one path off
(on the GPU the matmuls run in TF32 where torch allows it; the default does not).
"""
import pytest
import torch

from minilora import ops
from minilora.lora import get_peft_model
from minilora.models.config import ModelConfig
from minilora.models.llama import LlamaForCausalLM

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def loss_and_grads(off=(), device="cpu"):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).to(device)
    get_peft_model(model, r=4, lora_alpha=8, verbose=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1)).to(device)
    with ops.use_kernels("triton"), ops.without(*off):
        loss = model(ids, labels=ids).loss
        loss.backward()
    return loss.detach(), [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ops.FAST_PATHS)
def test_each_fast_path_off_alone_computes_the_same(name, device):
    loss, grads = loss_and_grads(device=device)
    loss_off, grads_off = loss_and_grads((name,), device)
    torch.testing.assert_close(loss_off, loss, rtol=1e-4, atol=1e-6)
    for a, b in zip(grads_off, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_without_names_what_it_switches_and_restores():
    x = torch.zeros(2, 3, device="cuda" if torch.cuda.is_available() else "cpu")
    with ops.use_kernels("triton"):
        assert ops.fast_lora_on(x, "lora_mlp")
        with ops.without("lora_mlp"):
            assert not ops.fast_lora_on(x, "lora_mlp") and ops.fast_lora_on(x, "lora_qkv")
        assert ops.fast_lora_on(x, "lora_mlp")
    with pytest.raises(ValueError, match="unknown fast path"):
        with ops.without("flash"):
            pass

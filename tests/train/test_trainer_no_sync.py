"""A training step never makes the host wait for the GPU.

A host-device sync (`.item()`, `bool(t.any())`, a blocking copy to the CPU) stalls the Python thread until every
queued kernel has run, so the next launches start late and the GPU idles between them. Each stage of the
end-to-end ablation (benchmarks/bench_e2e.py) runs one forward + backward + AdamW step here under
``torch.cuda.set_sync_debug_mode("error")``, which turns any sync into an exception naming the op.
"""
import pytest
import torch

from minilora import ops
from minilora.linear4bit import quantize_model
from minilora.lora import get_peft_model
from minilora.models.config import ModelConfig
from minilora.models.llama import LlamaForCausalLM

STAGES = {  # name: (4-bit base, kernel mode, fused linear + CE, checkpointing)
    "lora-bf16": (False, "reference", False, False),
    "+ nf4": (True, "reference", False, False),
    "+ triton": (True, "triton", False, False),
    "+ fused CE": (True, "triton", True, False),
    "+ offload": (True, "triton", True, "offload"),
}


def build(nf4: bool, checkpointing):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
    if nf4:
        quantize_model(model)
    get_peft_model(model, r=8, lora_alpha=16, verbose=False)
    model.gradient_checkpointing = checkpointing
    return model.train()


@pytest.mark.gpu
@pytest.mark.parametrize("stage", list(STAGES))
def test_training_step_does_not_sync(stage):
    nf4, mode, fused, checkpointing = STAGES[stage]
    model = build(nf4, checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, 512, (2, 64), device="cuda")

    def step():
        loss = model(ids, labels=ids, return_logits=not fused).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with ops.use_kernels(mode):
        step()  # warm-up: compiles kernels, allocates optimizer state and pinned buffers
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)

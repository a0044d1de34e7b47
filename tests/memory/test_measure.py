"""minilora.memory.measure: activation bytes measured with saved-tensor hooks and a walk of the autograd graph."""
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minilora.lora import get_peft_model
from minilora.memory.measure import (
    SavedTensorMeter,
    function_held_bytes,
    measure_activations,
    module_storage_keys,
    storage_key,
)
from minilora.models.config import ModelConfig
from minilora.models.registry import build_model


def test_meter_counts_each_storage_once():
    x = torch.randn(100, 10, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x * x).sum()  # mul saves x twice: one storage
    assert meter.saves == 2
    assert meter.bytes == x.numel() * 4
    y.backward()
    assert torch.allclose(x.grad, 2 * x)  # the hooks changed nothing


def test_views_count_their_whole_storage():
    base = torch.randn(64, 64, requires_grad=True)
    with SavedTensorMeter() as meter:
        v = base[:8].exp()  # exp saves its output: a fresh (8, 64) tensor
        w = base.t().sin()  # sin saves its input: a view of base's storage
    assert meter.bytes == 8 * 64 * 4 + 64 * 64 * 4
    assert meter.bytes_by_device() == {"cpu": meter.bytes}
    (v.sum() + w.sum()).backward()


def test_module_weights_are_excluded():
    lin = nn.Linear(32, 16)
    x = torch.randn(4, 32, requires_grad=True)
    with SavedTensorMeter(lin) as meter:
        lin(x).sum().backward()
    assert storage_key(lin.weight) in module_storage_keys(lin)
    assert meter.bytes == x.numel() * 4  # the input, not the weight


def test_checkpointing_saves_less():
    x = torch.randn(256, 64, requires_grad=True)

    def f(t):
        return t.sin().exp().cos()

    with SavedTensorMeter() as plain:
        f(x).sum().backward()
    with SavedTensorMeter() as ckpt:
        checkpoint(f, x, use_reentrant=False).sum().backward()
    assert plain.bytes == 2 * x.numel() * 4  # sin saves x; exp saves its output, which cos saves again
    assert ckpt.bytes == x.numel() * 4  # only the checkpoint's input


class _KeepsAttr(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.kept = (x.detach().clone(), None)  # kept as an attribute, invisible to saved-tensor hooks
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_function_attributes_are_found():
    x = torch.randn(10, 10, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = _KeepsAttr.apply(x).sum()
    assert meter.bytes == 0
    assert function_held_bytes(y) == {"_KeepsAttrBackward": 400}
    with pytest.raises(TypeError, match="output tensor"):
        function_held_bytes([y])


def test_measure_activations_rejects_a_loss_without_graph():
    lin = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="needs a gradient"):
        measure_activations(lin, lambda: lin(torch.randn(2, 4)).sum().detach())


def test_checkpointing_modes_on_a_tiny_model():
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = get_peft_model(build_model(cfg, dtype=torch.float32), r=4, verbose=False).train()
    ids = torch.randint(0, 128, (2, 16))
    reports = {}
    for mode in (False, True, "offload"):
        model.gradient_checkpointing = mode
        reports[mode] = measure_activations(model, lambda: model(ids, labels=ids))
        reports[mode].loss.backward()
    assert reports[True].saved < reports[False].saved
    # offload keeps each layer input as a ctx attribute (in CPU memory), one (B, T, C) float32 tensor a layer
    held = reports["offload"].held.get("OffloadedCheckpointBackward", 0)
    assert held >= cfg.num_hidden_layers * 2 * 16 * 64 * 4
    assert reports["offload"].saved < reports[True].saved
    assert reports[False].total == reports[False].saved + sum(reports[False].held.values())

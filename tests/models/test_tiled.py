"""The tiled MLP half of a decoder layer: run over tiles of tokens it gives the untiled outputs and gradients.

Through the whole model under offloaded checkpointing (the forward runs the MLP tile by tile without a graph; the
backward recomputes and backpropagates one tile at a time), for odd lengths and tile sizes that do and do not
divide the token count, on the reference ops and on the Triton path (interpreter on the CPU).
"""
from __future__ import annotations

import pytest
import torch
from helpers.train import randomize_lora, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import ops
from minilora.lora import get_peft_model
from minilora.models.tiled import set_tile_tokens, tiled_backward, tiled_forward


def lora_model(seed=0):
    m = tiny_model(seed=seed, vocab_size=64)
    get_peft_model(m, r=4, lora_alpha=8, verbose=False, random_state=seed)
    randomize_lora(m, seed=seed)
    return m.double().train()  # float64: tiles and whole runs agree to rounding far below the tolerance


def loss_and_grads(m, ids, mode, tile):
    m.gradient_checkpointing = mode
    set_tile_tokens(m, tile)
    m.zero_grad()
    loss = m(ids, ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 2), seq=st.integers(1, 23), tile=st.integers(1, 30), seed=st.integers(0, 50))
def test_offloaded_tiled_layers_give_the_untiled_loss_and_gradients(batch, seq, tile, seed):
    m = lora_model()
    ids = torch.randint(0, 64, (batch, seq), generator=torch.Generator().manual_seed(seed))
    want_loss, want = loss_and_grads(m, ids, False, None)  # no checkpointing, no tiles: the plain graph
    loss, got = loss_and_grads(m, ids, "offload", tile)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kernels", ["reference", "triton"])
def test_tiles_match_the_whole_layer_on_both_op_paths(kernels):
    """One layer's MLP half, float32: tile by tile (forward, and recompute + backward) against autograd on the whole;
    the weights' gradients come back summed over the tiles, not accumulated tile by tile."""
    m = tiny_model(seed=3, vocab_size=64)
    get_peft_model(m, r=4, lora_alpha=8, verbose=False, random_state=3)
    randomize_lora(m, seed=3)
    layer = m.model.layers[0]
    h = torch.randn(2, 13, m.config.hidden_size, generator=torch.Generator().manual_seed(1))
    g = torch.randn_like(h)
    with ops.use_kernels(kernels):
        whole_in = h.clone().requires_grad_(True)
        whole = layer.mlp_half(whole_in)
        whole.backward(g)
        want = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        layer.zero_grad()
        with torch.no_grad():
            out = tiled_forward(layer.mlp_half, h, 5)
        grad_h, sums = tiled_backward(layer.mlp_half, h, g, 5, params=list(layer.parameters()))
    torch.testing.assert_close(out, whole.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_h, whole_in.grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in layer.parameters())  # summed here, handed to autograd once by the caller
    got = {n: sums[p] for n, p in layer.named_parameters() if p in sums}
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_an_inference_forward_runs_in_tiles_with_the_same_logits():
    m = lora_model().eval()
    ids = torch.randint(0, 64, (1, 17))
    with torch.no_grad():
        set_tile_tokens(m, None)
        want = m(ids).logits
        set_tile_tokens(m, 4)
        got = m(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_tile_must_be_a_positive_number_of_tokens():
    m = tiny_model(vocab_size=64)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            set_tile_tokens(m, bad)


def test_each_weight_gets_one_gradient_per_backward_however_many_tiles():
    """DDP's reducer marks a weight ready when its gradient lands: a second landing in one step is an error there."""
    m = lora_model()
    landed = {}
    for name, p in m.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, name=name: landed.__setitem__(name, landed.get(name, 0) + 1))
    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(0))
    loss_and_grads(m, ids, "offload", 3)  # 22 tokens: 8 tiles a layer
    assert landed and set(landed.values()) == {1}, landed

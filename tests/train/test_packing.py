"""Padding-free packing: a packed batch trains exactly like its examples run one by one.

- the packed loss (a sum over tokens) equals the sum of the examples' own losses, and the LoRA gradients of each
  example's loss taken inside the packed batch equal that example's gradients alone (hypothesis over lengths from
  1 token to max_seq_length): nothing flows across an example boundary, forward or backward;
- Mistral's sliding window still holds inside a packed example;
- the FlexAttention path (its block mask built from the model's rule) equals the per-example reference;
- best-fit-decreasing rows never overflow, keep every example once and fill rows nearly full;
- no (B, 1, T, T) mask is ever built; bad segment ids get one clear error.
Tolerances: fp32 on a CPU; packing changes only summation order, so 1e-5 relative (1e-6 absolute) holds.
"""
from __future__ import annotations

import pytest
import torch
from helpers.train import randomize_lora, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.kernels.segment_attention import (
    PackedSegments,
    positions_from_segments,
    segment_attention_flex,
    segment_attention_reference,
)
from minilora.lora import get_peft_model
from minilora.train import Example
from minilora.train.data import IGNORE_INDEX
from minilora.train.packing import PADDING_SEGMENT, collate_packed, pack_examples, real_tokens

VOCAB = 61
TOL = dict(atol=1e-6, rtol=1e-5)


def examples_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        labels = [IGNORE_INDEX if i < n // 3 else t for i, t in enumerate(ids)]  # a masked prompt, then a response
        out.append(Example(ids, labels))
    return out


def lora_tiny(seed=0, **kw):
    model = tiny_model(seed=seed, vocab_size=VOCAB, **kw)
    get_peft_model(model, r=4, lora_alpha=8, verbose=False)
    return randomize_lora(model, seed=seed).train()


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora" in n}


def loss_and_grads(model, batch, labels):
    model.zero_grad(set_to_none=True)
    kwargs = {k: batch[k] for k in ("position_ids", "segment_ids") if k in batch}
    loss = model(batch["input_ids"], labels, num_items_in_batch=1, **kwargs).loss  # a plain sum over tokens
    loss.backward()
    return loss.detach(), lora_grads(model)


def alone(model, e: Example):
    return loss_and_grads(model, {"input_ids": torch.tensor([e.input_ids])}, torch.tensor([e.labels]))


@settings(max_examples=12, deadline=None)
@given(lengths=st.lists(st.integers(1, 24), min_size=1, max_size=7), extra=st.sampled_from([0, 1, 2]),
       seed=st.integers(0, 10_000))
def test_packed_batch_trains_like_each_example_alone(lengths, extra, seed):
    max_len = 24  # lengths reach both 1 and max_seq_length; `extra` adds examples that fill a row on their own
    exs = examples_of(lengths + [max_len] * extra, seed)
    model = lora_tiny(seed % 7)
    rows = pack_examples(exs, max_len)
    batch = collate_packed(rows, pad_id=0, pad_to=max_len)
    assert "attention_mask" not in batch and batch["segment_ids"].shape == batch["input_ids"].shape
    loss, grads = loss_and_grads(model, batch, batch["labels"])
    singles = [alone(model, e) for row in rows for e in row]
    torch.testing.assert_close(loss, sum(s[0] for s in singles), **TOL)
    for name in grads:
        torch.testing.assert_close(grads[name], sum(s[1][name] for s in singles), **TOL)
    # per example: keep only example k's labels inside the packed batch — its gradients are those of k alone
    k = 0
    for b, row in enumerate(rows):
        start = 0
        for e in row:
            own = torch.full_like(batch["labels"], IGNORE_INDEX)
            own[b, start + 1:start + len(e)] = batch["labels"][b, start + 1:start + len(e)]
            loss_k, grads_k = loss_and_grads(model, batch, own)
            torch.testing.assert_close(loss_k, singles[k][0], **TOL)
            for name in grads_k:
                torch.testing.assert_close(grads_k[name], singles[k][1][name], **TOL)
            start, k = start + len(e), k + 1


def test_collate_marks_boundaries_positions_and_first_labels():
    exs = [Example([3, 4, 5, 6], [3, 4, 5, 6]), Example([7, 8, 9], [7, 8, 9]), Example([10], [10])]
    batch = collate_packed([exs], pad_id=0, pad_to=10)
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, -1, -1]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 1]
    # the first token of every example is never a label: nothing asks example k-1 to predict example k's start
    assert batch["labels"][0].tolist() == [-100, 4, 5, 6, -100, 8, 9, -100, -100, -100]
    assert real_tokens(batch) == 8
    assert torch.equal(positions_from_segments(batch["segment_ids"]), batch["position_ids"])
    with pytest.raises(ValueError, match="pad_to=5"):
        collate_packed([exs], pad_id=0, pad_to=5)


def test_nothing_crosses_a_boundary_in_the_logits():
    model = lora_tiny().eval()
    exs = examples_of([5, 9, 4], seed=3)
    batch = collate_packed([exs], pad_id=0)
    out = model(batch["input_ids"], segment_ids=batch["segment_ids"]).logits
    changed = batch["input_ids"].clone()
    changed[0, :5] = (changed[0, :5] + 1) % VOCAB  # rewrite the first example only
    out2 = model(changed, segment_ids=batch["segment_ids"]).logits
    torch.testing.assert_close(out[0, 5:], out2[0, 5:], atol=0, rtol=0)  # the others do not move at all
    start = 0
    for e in exs:  # and each example's logits are those it gets alone (positions restarted by the model)
        torch.testing.assert_close(out[0, start:start + len(e)], model(torch.tensor([e.input_ids])).logits[0], **TOL)
        start += len(e)


def test_mistral_sliding_window_holds_inside_a_packed_example():
    window = 3
    model = lora_tiny(model_type="mistral", sliding_window=window).eval()
    exs = examples_of([9, 2, 7], seed=5)  # two examples longer than the window
    batch = collate_packed([exs], pad_id=0)
    out = model(batch["input_ids"], segment_ids=batch["segment_ids"]).logits
    start = 0
    for e in exs:
        ref = model(torch.tensor([e.input_ids])).logits[0]  # the unpacked path applies the window itself
        torch.testing.assert_close(out[0, start:start + len(e)], ref, **TOL)
        start += len(e)
    # and the window really bites: without it the long example's last logits differ
    model.config.sliding_window = None
    unwindowed = model(batch["input_ids"], segment_ids=batch["segment_ids"]).logits
    assert not torch.allclose(unwindowed[0, 8], out[0, 8], atol=1e-4)


def causal(q, k):
    return k <= q


def windowed(q, k):
    return (k <= q) & (q - k < 4)


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6), rule=st.sampled_from([causal, windowed]),
       n_rep=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_flex_block_mask_matches_the_reference(lengths, rule, n_rep, seed):
    # FlexAttention runs forward-only on a CPU (uncompiled): this checks the block mask built from the model's
    # rule; the compiled kernel and its backward are checked by the gpu test below
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths) + 3  # three tokens of padding
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)] + [torch.full((3,), PADDING_SEGMENT)])
    seg = torch.stack([ids, ids.flip(0)])  # a second row with the examples in reverse order
    q = torch.randn(2, 2 * n_rep, T, 8, generator=g)
    k, v = torch.randn(2, 2, T, 8, generator=g), torch.randn(2, 2, T, 8, generator=g)
    ref = segment_attention_reference(q, k, v, PackedSegments(seg, rule))
    fast = segment_attention_flex(q, k, v, PackedSegments(seg, rule), compiled=False)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_best_fit_decreasing_rows():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 300, (500,), generator=g).tolist() + [512, 512]
    exs = [Example([1] * n, [1] * n) for n in lengths]
    rows = pack_examples(exs, 512)
    assert sorted(id(e) for r in rows for e in r) == sorted(id(e) for e in exs)  # every example exactly once
    used = [sum(len(e) for e in r) for r in rows]
    assert max(used) <= 512
    assert sum(used) / (512 * len(rows)) > 0.97  # rows end up nearly full
    with pytest.raises(ValueError, match="longer than max_seq_length"):
        pack_examples(exs, 100)


def test_segment_ids_errors_are_clear():
    model = lora_tiny().eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(ValueError, match="segment_ids must be an integer tensor"):
        model(ids, segment_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="without attention_mask"):
        model(ids, segment_ids=torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 6))


def test_no_dense_mask_is_built(monkeypatch):
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(None if attn_mask is None else tuple(attn_mask.shape))
        return original(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = lora_tiny().eval()
    batch = collate_packed([examples_of([4, 6])], pad_id=0, pad_to=12)
    model(batch["input_ids"], segment_ids=batch["segment_ids"])
    assert seen and all(s is None or (len(s) == 2 and s[0] <= 6) for s in seen)  # one (n, n) mask per example


@pytest.mark.gpu
def test_compiled_flex_matches_reference_on_gpu():
    """The GPU path: compiled FlexAttention (bf16, GQA, a sliding-window rule), forward and backward, against
    every example alone through SDPA. bf16 operands: 3e-2 tolerance on outputs and gradients."""
    g = torch.Generator().manual_seed(0)
    lengths = [1, 300, 77, 1000, 2, 500, 168]  # a fixed shape: (2, 8, 2048, 64) — one compile
    T = 2048
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    ids = torch.cat([ids, torch.full((T - len(ids),), PADDING_SEGMENT)])
    seg = torch.stack([ids, ids.flip(0)]).cuda()
    q = torch.randn(2, 8, T, 64, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    k = torch.randn(2, 2, T, 64, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    v = torch.randn(2, 2, T, 64, generator=g).to("cuda", torch.bfloat16).requires_grad_()
    dy = torch.randn(2, 8, T, 64, generator=g).to("cuda", torch.bfloat16)
    outs = []
    for fn in (segment_attention_reference, segment_attention_flex):
        y = fn(q, k, v, PackedSegments(seg, windowed))
        outs.append([x.float() for x in (y, *torch.autograd.grad(y, (q, k, v), dy))])
    for fast, ref in zip(outs[1], outs[0]):
        torch.testing.assert_close(fast, ref, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
def test_packed_training_step_never_waits_for_the_gpu():
    """A packed step on CUDA (block mask, compiled FlexAttention, positions from the ids) makes no host sync."""
    model = lora_tiny().cuda()
    batch = {k: v.cuda() for k, v in collate_packed(pack_examples(examples_of([5, 30, 2, 60, 17]), 64), 0,
                                                    pad_to=64).items()}

    def step():
        loss = model(batch["input_ids"], batch["labels"], segment_ids=batch["segment_ids"], return_logits=False).loss
        loss.backward()
    step()  # compiles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_packed_rows_on_a_cpu_are_padded_to_the_longest_not_to_max_seq_length(tmp_path):
    """Off a GPU nothing is compiled per shape, so full-length rows would only add padding: on the bundled dates
    task (examples of ~75 tokens, max_seq_length 128: one per row) they made packed steps 1.6x slower than unpacked
    ones for the same real tokens."""
    from minilora.train import Trainer, TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path), max_seq_length=64, packing=True, per_device_train_batch_size=2,
                             max_steps=1, progress_bar=False)
    trainer = Trainer(lora_tiny(), args, examples_of([20, 25, 30, 12]))
    batch = trainer.micro_batch(0)
    longest = max(sum(len(e) for e in row) for row in trainer.rows)
    assert batch["input_ids"].shape[1] <= longest < 64
    assert real_tokens(batch) == int((batch["segment_ids"] != PADDING_SEGMENT).sum())

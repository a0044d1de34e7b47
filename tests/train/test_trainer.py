"""Trainer: exact gradient accumulation, schedules, resume, determinism, NaN, checkpointing modes, atomic files."""
import json
import math
import os

import pytest
import torch
from helpers.train import tiny_model

from minilora.lora import get_peft_model
from minilora.models.checkpointing import run_layer
from minilora.train import (
    Example,
    Trainer,
    TrainingArguments,
    TrainingError,
    collate,
    count_trained_tokens,
    lr_multiplier,
)


def lora_model(seed=0, dropout=0.0):
    m = tiny_model(seed=seed, vocab_size=64)
    get_peft_model(m, r=4, lora_alpha=8, lora_dropout=dropout, verbose=False, random_state=seed)
    return m


def dataset(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(4, 14, (1,), generator=g))
        ids = torch.randint(3, 64, (L,), generator=g).tolist()
        cut = int(torch.randint(1, L - 2, (1,), generator=g))
        out.append(Example(ids, [-100] * cut + ids[cut:]))  # a masked prompt of varying length
    return out


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=6, learning_rate=1e-2, warmup_steps=2, progress_bar=False, seed=1)
    base.update(kw)
    return TrainingArguments(**base)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_equals_one_big_batch():
    """k micro-batches of uneven lengths, each divided by the step's total token count == one batch of all."""
    exs = dataset(6, seed=3)
    model = lora_model()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    big = collate(exs, 0)
    model.zero_grad()
    model(big["input_ids"], big["labels"], attention_mask=big["attention_mask"]).loss.backward()
    want = grads(model)
    micro = [collate(exs[i:i + 2], 0) for i in (0, 2, 4)]
    n_items = sum(count_trained_tokens(b["labels"]) for b in micro)
    model.zero_grad()
    for b in micro:
        model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
              num_items_in_batch=n_items).loss.backward()
    got = grads(model)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-5)
    # the naive mean of per-micro-batch means gives a different (wrong) gradient
    model.zero_grad()
    for b in micro:
        (model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask")).loss / 3).backward()
    naive = grads(model)
    assert max((naive[n] - want[n]).abs().max().item() for n in want) > 1e-4


def test_trainer_step_matches_big_batch_step(tmp_path):
    """The trainer with k=2 x batch 2 takes the same first step as k=1 x batch 4 (same examples, same order)."""
    exs = dataset(4, seed=5)
    results = []
    for bs, k in ((4, 1), (2, 2), (1, 4)):
        m = lora_model()
        tr = Trainer(m, args(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=k,
                             max_steps=1, warmup_steps=0), exs)
        tr._epoch_order = lambda epoch: list(range(len(exs)))  # same order for every layout
        rec = tr.training_step()
        results.append((rec["loss"], {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}))
    for loss, w in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        for n in w:
            torch.testing.assert_close(w[n], results[0][1][n], atol=1e-6, rtol=1e-5)


def test_schedules():
    assert lr_multiplier(0, 10, 2) == 0.5 and lr_multiplier(1, 10, 2) == 1.0
    assert lr_multiplier(10, 10, 2, "linear") == 0.0
    assert lr_multiplier(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(7, 10, 0, "constant") == 1.0
    with pytest.raises(ValueError, match="choose one of"):
        lr_multiplier(0, 10, 0, "step")


def run(tmp_path, name, stop_after=None, resume=None, **kw):
    torch.manual_seed(123)  # the same starting point for the model's LoRA init
    m = lora_model(dropout=0.1)
    tr = Trainer(m, args(tmp_path / name, save_steps=2, **kw), dataset())
    tr.train(resume_from_checkpoint=resume, stop_after=stop_after)
    return tr, {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}


def test_same_seed_same_run_and_resume_continues_exactly(tmp_path):
    full, w_full = run(tmp_path, "full")
    again, w_again = run(tmp_path, "again")
    assert [r["loss"] for r in full.log_history] == [r["loss"] for r in again.log_history]
    # stop after 3 steps (the last checkpoint is step 2), then resume from it in a fresh process-like state
    run(tmp_path, "cut", stop_after=3)
    assert sorted(os.listdir(tmp_path / "cut")) == ["checkpoint-2", "train_log.csv", "train_log.json"]
    torch.manual_seed(999)  # the resumed run must not depend on the RNG state it starts with
    resumed, w_resumed = run(tmp_path, "cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert [r["loss"] for r in resumed.log_history] == [r["loss"] for r in full.log_history]
    assert [r["lr"] for r in resumed.log_history] == [r["lr"] for r in full.log_history]
    for n in w_full:
        assert torch.equal(w_full[n], w_resumed[n]), n
    with open(tmp_path / "cut" / "train_log.csv") as f:
        assert len(f.read().strip().splitlines()) == 1 + 6  # header + one row per step, no duplicates
    state = json.loads((tmp_path / "cut" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4
    assert os.path.isfile(tmp_path / "cut" / "checkpoint-4" / "adapter_model.safetensors")


def test_resume_into_another_model_is_refused(tmp_path):
    run(tmp_path, "a", stop_after=2)
    m = tiny_model(vocab_size=64)
    get_peft_model(m, r=2, lora_alpha=8, verbose=False)
    tr = Trainer(m, args(tmp_path / "b"), dataset())
    with pytest.raises(Exception, match="shape|other parameters"):
        tr.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))


def test_nan_loss_stops_with_a_clear_error_and_saves_nothing(tmp_path):
    m = lora_model()
    with torch.no_grad():
        m.model.norm.weight.fill_(float("nan"))
    tr = Trainer(m, args(tmp_path / "nan", save_steps=1), dataset())
    with pytest.raises(TrainingError, match="loss became nan"):
        tr.train()
    assert not [d for d in os.listdir(tmp_path / "nan") if d.startswith("checkpoint")]


def test_bad_arguments_and_inputs(tmp_path):
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        args(tmp_path, lr_scheduler_type="exp")
    with pytest.raises(ValueError, match="optim"):
        args(tmp_path, optim="adamw_16bit")
    with pytest.raises(ValueError, match="max_steps"):
        args(tmp_path, max_steps=0)
    with pytest.raises(ValueError, match="empty"):
        Trainer(lora_model(), args(tmp_path), [])
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(tiny_model(vocab_size=64).requires_grad_(False), args(tmp_path), dataset())
    (tmp_path / "afile").write_text("x")
    tr = Trainer(lora_model(), args(tmp_path / "afile"), dataset())
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        tr.train()


def test_logs_eval_and_packing(tmp_path):
    tr = Trainer(lora_model(), args(tmp_path, packing=True, max_seq_length=32, eval_steps=3, max_steps=3),
                 dataset(), eval_dataset=dataset(4, seed=9))
    out = tr.train()
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,grad_norm") and len(rows) == 4
    last = out["log_history"][-1]
    assert {"loss", "lr", "tokens_per_s", "peak_mem_gib", "eval_loss"} <= set(last)
    assert math.isfinite(last["eval_loss"]) and last["peak_mem_gib"] > 0
    assert json.loads((tmp_path / "train_log.json").read_text())[-1]["step"] == 3


@pytest.mark.parametrize("mode", ["recompute", "offload"])
def test_checkpointing_modes_give_the_same_gradients_with_dropout(mode):
    def step(m):
        m.train()
        torch.manual_seed(7)
        ids = torch.randint(0, 64, (2, 12))
        m.zero_grad()
        loss = m(ids, ids).loss
        loss.backward()
        return loss.item(), grads(m)

    m = lora_model(dropout=0.2)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    loss0, g0 = step(m)
    m.gradient_checkpointing = mode
    loss1, g1 = step(m)
    assert loss0 == loss1
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
def test_offload_on_the_side_stream_gives_the_same_gradients_on_cuda():
    """On a GPU the copies run on a side stream and the backward prefetches: the ordering must stay exact."""
    m = lora_model().cuda()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 64, (3, 40), device="cuda")
    results = {}
    for mode in (False, "offload", "offload"):  # twice: the second run reuses the cached pinned buffers
        m.gradient_checkpointing = mode
        m.zero_grad()
        m(ids, ids).loss.backward()
        results.setdefault(mode, []).append(grads(m))
    for g in results["offload"]:
        for n in g:
            torch.testing.assert_close(g[n], results[False][0][n], atol=1e-6, rtol=1e-5)


def test_offload_keeps_the_layer_input_off_the_autograd_graph():
    """What 'offload' saves for backward: one CPU copy of the layer input, and no activation of the layer."""
    m = lora_model()
    layer = m.model.layers[0]
    x = torch.randn(2, 8, 64, requires_grad=True)
    cos, sin = m.model.rotary_emb(torch.arange(8)[None], x.dtype)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_layer(layer, "offload", x, cos, sin, None, True, None)
    assert saved == []  # autograd saved nothing: the only copy is the Function's own CPU tensor
    node = out.grad_fn
    stored = node.saved  # the offload store's handle: host chunks holding x's bytes
    assert stored.shape == tuple(x.shape) and stored.pieces
    assert all(chunk.device.type == "cpu" for _, _, chunk, _ in stored.pieces)
    assert sum(n for _, n, _, _ in stored.pieces) == x.numel() * x.element_size()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_layer(layer, False, x, cos, sin, None, True, None)
    assert len(saved) > 10  # without checkpointing every intermediate activation is kept


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    tr = Trainer(lora_model(), args(tmp_path, mixed_precision=precision, max_steps=2), dataset())
    out = tr.train()
    assert all(math.isfinite(r["loss"]) for r in out["log_history"])
    assert all(p.dtype == torch.float32 for p in tr.params.values())  # master weights stay fp32


def test_stops_early_once_the_loss_stays_below_the_threshold(tmp_path):
    out = Trainer(lora_model(), args(tmp_path, max_steps=10, stop_at_loss=1e9, stop_patience=3), dataset()).train()
    assert out["stopped_early"] and out["global_step"] == 3
    out = Trainer(lora_model(), args(tmp_path / "b", max_steps=4, stop_at_loss=1e-9), dataset()).train()
    assert not out["stopped_early"] and out["global_step"] == 4
    with pytest.raises(ValueError, match="stop_at_loss"):
        TrainingArguments(stop_at_loss=float("nan"))


def test_loss_only_at_labelled_positions_equals_the_full_loss():
    m = lora_model()
    ids = torch.randint(0, 64, (3, 12))
    labels = ids.clone()
    labels[:, :8] = -100  # response-only: most positions carry no label
    full = m(ids, labels).loss
    fused = m(ids, labels, return_logits=False).loss
    torch.testing.assert_close(fused, full)


def test_a_nan_loss_from_a_broken_base_names_the_weight_not_the_learning_rate(tmp_path):
    """A NaN in a frozen weight is no divergence: it was there before any update, and the message says where."""
    m = lora_model()
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.base_layer.weight[2, 3] = float("inf")
    tr = Trainer(m, args(tmp_path / "nan"), dataset())
    with pytest.raises(TrainingError, match=r"step 1: the model's frozen weight "
                                            r"'model.layers.1.mlp.up_proj.base_layer.weight' holds inf") as e:
        tr.train()
    assert "learning_rate" not in str(e.value)

"""`finetune(config)` owns a run: one validation, one process-group session, paths claimed before loading, the save
target checked before training, and a trained adapter never thrown away."""
import json
import os

import pytest
import torch
from helpers.train import tiny_model, tiny_tokenizer

from minilora.finetune import FineTuneConfig, finetune
from minilora.save import save_pretrained_merged
from minilora.train import distributed
from minilora.train.runs import RunSetupError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinybase") / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(d), dtype="float32")
    return d


def config(tiny_dir, out, **kw):
    base = dict(model_name=str(tiny_dir), max_steps=2, per_device_train_batch_size=2, eval_examples=2,
                output_dir=str(out), progress=False)
    base.update(kw)
    return FineTuneConfig(**base)


def quiet(*_a, **_k):
    pass


def test_the_python_api_runs_the_whole_job(tiny_dir, tmp_path):
    result = finetune(config(tiny_dir, tmp_path / "run", save_model=True, save_method="lora"), say=quiet)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == result.summary and summary["steps"] == 2 and summary["held_out"] == 2
    assert result.save_path == str(tmp_path / "run" / "model")
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()
    adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_dir.resolve())  # the base the loader loaded, as it names it
    assert not torch.distributed.is_initialized()  # the run's session left nothing joined


@pytest.mark.parametrize("kw, match", [
    (dict(lora_alpha=0), "lora_alpha"), (dict(lora_alpha=float("nan")), "lora_alpha"), (dict(r=0), "r must"),
    (dict(r=True), "r must"), (dict(bias="all"), "bias"), (dict(lora_dropout=1.0), "lora_dropout"),
    (dict(dtype="int8"), "dtype"), (dict(parallel="zero"), "parallel"), (dict(learning_rate=-1), "learning_rate"),
    (dict(use_gradient_checkpointing="sometimes"), "use_gradient_checkpointing"),
    (dict(save_method="merged_2bit"), "save_method"), (dict(quantization=["q4_0"]), "quantization"),
    (dict(raw_text_file="t.txt", chunk_size=4096), "longer than max_seq_length"),
])
def test_every_value_is_checked_when_the_config_is_made(kw, match):
    with pytest.raises(ValueError, match=match):
        FineTuneConfig(**kw)


def test_one_spelling_for_the_checkpointing_alias_and_the_dtype():
    c = FineTuneConfig(use_gradient_checkpointing="unsloth", dtype="bf16")
    assert c.use_gradient_checkpointing == "offload" and c.dtype == "bfloat16"


def test_session_joins_and_leaves_only_what_it_joined(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "_join_from_env", lambda: calls.append("join") or True)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("leave"))
    monkeypatch.setattr(distributed, "context", lambda parallel=None: distributed.DistContext())
    with pytest.raises(RuntimeError):
        with distributed.session():
            raise RuntimeError("a failing run")
    assert calls == ["join", "leave"]  # left even when the run failed
    calls.clear()
    monkeypatch.setattr(distributed, "_join_from_env", lambda: False)  # a group the caller joined
    with distributed.session():
        pass
    assert calls == []


def test_the_trainer_never_joins_a_group(monkeypatch, tmp_path):
    from minilora.lora import get_peft_model
    from minilora.train import Example, Trainer, TrainingArguments
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda *a, **k: pytest.fail("the Trainer joined a process group"))
    m = tiny_model(vocab_size=64)
    get_peft_model(m, r=2, verbose=False)
    t = Trainer(m, TrainingArguments(output_dir=str(tmp_path), max_steps=1, progress_bar=False),
                [Example([3, 4, 5], [3, 4, 5])])
    assert not t.dist.enabled


def test_a_full_or_read_only_save_target_is_refused_before_training(tiny_dir, tmp_path, monkeypatch):
    """Checked with the answers the system would give (the tests run as root, who may write anywhere)."""
    import shutil
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 0))
    with pytest.raises(RunSetupError, match="MiB free"):
        finetune(config(tiny_dir, tmp_path / "run", save_model=True), say=quiet)
    assert not (tmp_path / "run" / "train_log.csv").exists()  # nothing was trained
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: "locked" not in str(p))
    with pytest.raises(RunSetupError, match="cannot be written"):
        finetune(config(tiny_dir, tmp_path / "run2", save_model=True, save_path=str(tmp_path / "locked" / "m")),
                 say=quiet)
    assert not (tmp_path / "run2" / "train_log.csv").exists()


def test_a_failed_save_keeps_the_trained_adapter(tiny_dir, tmp_path, monkeypatch):
    import minilora.save as save_module
    real = save_module.save_pretrained_merged

    def broken(model, tokenizer, path, method="merged_16bit", **kw):
        if method != "lora":
            raise OSError(28, "No space left on device")
        return real(model, tokenizer, path, method, **kw)
    monkeypatch.setattr(save_module, "save_pretrained_merged", broken)
    with pytest.raises(RuntimeError, match="adapter is kept in") as e:
        finetune(config(tiny_dir, tmp_path / "run", save_model=True), say=quiet)
    kept = tmp_path / "run" / "adapter-unsaved"
    assert str(kept) in str(e.value) and (kept / "adapter_model.safetensors").is_file()


def test_summary_is_written_whole_and_never_through_a_link(tiny_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "summary.json").symlink_to(victim)
    finetune(config(tiny_dir, run, overwrite_output_dir=True), say=quiet)
    assert victim.read_text() == "keep me"
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_auto_checkpointing_plans_within_the_budget_or_refuses_before_training(tiny_dir, tmp_path):
    from minilora.memory.plan import MemoryBudgetError
    with pytest.raises(MemoryBudgetError, match="Give a budget of at least"):
        finetune(config(tiny_dir, tmp_path / "small", use_gradient_checkpointing="auto", memory_budget=1e-6),
                 say=quiet)
    assert not (tmp_path / "small" / "train_log.csv").exists()  # refused before the first step
    result = finetune(config(tiny_dir, tmp_path / "run", use_gradient_checkpointing="auto", memory_budget=4),
                      say=quiet)
    assert result.summary["steps"] == 2
    with pytest.raises(ValueError, match="only with use_gradient_checkpointing='auto'"):
        FineTuneConfig(memory_budget=4)

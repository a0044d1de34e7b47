"""Runs that cannot mix: one run per output directory, checkpoints that belong to the run that resumes them, a damaged
checkpoint or adapter named (and skipped by "latest"), and a default command that can be run again and again."""
import json
import os
import re

import pytest
import torch
from helpers.train import randomize_lora, tiny_model, tiny_tokenizer

from minilora.cli import main
from minilora.io.adapters import load_adapter, save_adapter
from minilora.lora import get_peft_model
from minilora.save import save_pretrained_merged
from minilora.train import Example, Trainer, TrainingArguments, TrainingError, runs
from minilora.train.checkpoints import CorruptCheckpointError


def lora_model():
    torch.manual_seed(0)
    m = tiny_model(seed=0, vocab_size=64)
    get_peft_model(m, r=2, lora_alpha=4, verbose=False, random_state=0)
    return m


def data(n=8, shift=0):
    g = torch.Generator().manual_seed(shift)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 64, (8,), generator=g).tolist()
        out.append(Example(ids, [-100] * 3 + ids[3:]))
    return out


def trainer(out, dataset=None, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=4,
                learning_rate=1e-2, warmup_steps=0, progress_bar=False, save_steps=2)
    base.update(kw)
    return Trainer(lora_model(), TrainingArguments(**base), dataset or data())


def test_a_used_output_dir_is_refused_unless_resuming_or_overwriting(tmp_path):
    trainer(tmp_path, max_steps=6).train()
    assert {"checkpoint-2", "checkpoint-4", "checkpoint-6"} <= set(os.listdir(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already holds a run.*overwrite_output_dir"):
        trainer(tmp_path).train()
    # overwriting deletes the old run's checkpoints and logs (a stale checkpoint-6 could be resumed later)
    out = trainer(tmp_path, max_steps=2, save_steps=0, overwrite_output_dir=True).train()
    assert out["global_step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "train_log.csv", "train_log.json"]


def test_resume_checks_the_checkpoint_belongs_to_this_run(tmp_path):
    trainer(tmp_path).train(stop_after=2)
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["run"]["learning_rate"] == 1e-2 and len(state["run"]["data"]) == 16
    with pytest.raises(TrainingError, match="another run configuration: learning_rate: 0.01 in the checkpoint, "
                                            "0.02 now"):
        trainer(tmp_path, learning_rate=2e-2).train(resume_from_checkpoint="latest")
    with pytest.raises(TrainingError, match="data: "):
        trainer(tmp_path, dataset=data(shift=1)).train(resume_from_checkpoint="latest")
    with pytest.raises(TrainingError, match="seed: "):
        trainer(tmp_path, seed=5).train(resume_from_checkpoint="latest")
    # the same run resumes; a larger max_steps extends it (the schedule stretches to the new end)
    assert trainer(tmp_path).train(resume_from_checkpoint="latest")["steps_trained"] == 2
    assert trainer(tmp_path, max_steps=5).train(resume_from_checkpoint="latest")["steps_trained"] == 1


def test_resuming_a_finished_run_says_nothing_was_trained(tmp_path):
    trainer(tmp_path).train()
    with pytest.warns(UserWarning, match="nothing to train.*checkpoint-4.*step 4"):
        out = trainer(tmp_path).train(resume_from_checkpoint="latest")
    assert out["steps_trained"] == 0 and out["global_step"] == 4


@pytest.mark.parametrize("damage, file", [("truncate", "trainable.safetensors"), ("truncate", "optimizer.safetensors"),
                                          ("garble", "trainer_state.json"), ("garble", "trainable.safetensors")])
def test_a_damaged_checkpoint_is_named_and_latest_falls_back(tmp_path, damage, file):
    trainer(tmp_path).train(stop_after=4)
    path = tmp_path / "checkpoint-4" / file
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2] if damage == "truncate" else b"\x00{" + raw[2:])
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint-4.*{file}"):
        trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    with pytest.warns(UserWarning, match=f"resuming from .*checkpoint-2.*damaged.*checkpoint-4.*{file}"):
        out = trainer(tmp_path).train(resume_from_checkpoint="latest")
    assert out["steps_trained"] == 2
    # when every checkpoint is damaged, the error lists them
    for name in ("checkpoint-2", "checkpoint-4"):
        p = tmp_path / name / file
        p.write_bytes(p.read_bytes()[:7])
    with pytest.raises(CorruptCheckpointError, match="every checkpoint"):
        trainer(tmp_path).train(resume_from_checkpoint="latest")


@pytest.mark.parametrize("file, damage", [("adapter_config.json", b"{\"r\": 4,"),
                                          ("adapter_model.safetensors", None)])
def test_a_damaged_adapter_is_named(tmp_path, file, damage):
    model = randomize_lora(lora_model())
    save_adapter(model, str(tmp_path / "ad"))
    path = tmp_path / "ad" / file
    path.write_bytes(damage if damage is not None else path.read_bytes()[:100])
    with pytest.raises(ValueError, match=file):
        load_adapter(tiny_model(vocab_size=64), str(tmp_path / "ad"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runsbase") / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(d), dtype="float32")
    return d


def cli(tiny_dir, *extra):
    return main(["train", "--model_name", str(tiny_dir), "--load_in_4bit", "false", "--max_steps", "2",
                 "--eval_examples", "0", "--per_device_train_batch_size", "2", "--no_progress", *extra])


def test_cli_default_runs_get_their_own_directories_and_resume_latest(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(tiny_dir, "--save_steps", "2") == 0
    assert cli(tiny_dir, "--save_steps", "2", "--save_model", "--save_method", "lora") == 0
    runs = sorted(os.listdir(tmp_path / "outputs"))
    assert len(runs) == 2 and all(r.startswith("run-") for r in runs)
    for r in runs:
        assert (tmp_path / "outputs" / r / "summary.json").is_file()
    newest = max(runs, key=lambda r: (r.split("-")[1:3], int(r.split("-")[3]) if r.count("-") == 3 else 1))
    assert (tmp_path / "outputs" / newest / "model" / "adapter_config.json").is_file()  # default save_path
    capsys.readouterr()
    assert cli(tiny_dir, "--resume_from_checkpoint", "latest") == 1  # a runtime outcome, not a success
    out = capsys.readouterr()
    assert f"resuming the newest run with a checkpoint: outputs/{newest}" in out.out
    assert re.search("nothing was trained.*checkpoint-2.*--max_steps", out.err)
    assert cli(tiny_dir, "--resume_from_checkpoint", "latest", "--max_steps", "3") == 0
    assert json.loads((tmp_path / "outputs" / newest / "summary.json").read_text())["steps"] == 3


def refused(capsys, pattern, *argv):
    """The command exits with 2 (a usage error) and one line matching ``pattern``."""
    capsys.readouterr()
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_cli_refuses_to_mix_runs_or_destroy_the_model(tiny_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert cli(tiny_dir, "--output_dir", out) == 0
    refused(capsys, "--output_dir: .*already holds a run.*--overwrite_output_dir", tiny_dir, "--output_dir", out)
    assert cli(tiny_dir, "--output_dir", out, "--overwrite_output_dir") == 0
    before = sorted(os.listdir(tiny_dir))
    for target in (tiny_dir, tiny_dir.parent):
        refused(capsys, "--save_path: .*loaded from", tiny_dir, "--output_dir", str(tmp_path / "p"), "--save_model",
                "--save_path", str(target), "--overwrite_output_dir")
    assert sorted(os.listdir(tiny_dir)) == before
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    refused(capsys, "--save_path: .*not empty.*--overwrite_output_dir", tiny_dir, "--output_dir",
            str(tmp_path / "q"), "--save_model", "--save_path", str(tmp_path / "full"))
    refused(capsys, "would replace the run directory", tiny_dir, "--output_dir", str(tmp_path / "r"), "--save_model",
            "--save_path", str(tmp_path / "r"))


def test_resuming_into_another_runs_directory_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    trainer(a).train(stop_after=2)
    trainer(b).train()
    before = {n: (b / n).stat().st_mtime_ns for n in os.listdir(b)}
    with pytest.raises(FileExistsError, match="holds another run .* than the checkpoint"):
        trainer(b).train(resume_from_checkpoint=str(a / "checkpoint-2"))
    assert {n: (b / n).stat().st_mtime_ns for n in os.listdir(b)} == before  # B is untouched
    # an empty directory may receive the resumed run
    assert trainer(tmp_path / "c").train(resume_from_checkpoint=str(a / "checkpoint-2"))["steps_trained"] == 2


def test_the_fingerprint_covers_the_base_weights_format_dtype_and_global_batch(tmp_path):
    trainer(tmp_path).train(stop_after=2)
    other = trainer(tmp_path)
    with torch.no_grad():  # other weights at the same base (same shapes, same names)
        other.model.model.layers[0].mlp.down_proj.base_layer.weight.mul_(1.5)
    other.base_fingerprint = runs.base_fingerprint(other.model)
    with pytest.raises(TrainingError, match="base: "):
        other.train(resume_from_checkpoint="latest")
    with pytest.raises(TrainingError, match="global_batch: 2 in the checkpoint, 4 now"):
        trainer(tmp_path, global_train_batch_size=4).train(resume_from_checkpoint="latest")
    from minilora.linear4bit import quantize_model
    from minilora.train.runs import base_fingerprint
    m = lora_model()
    dense = base_fingerprint(m)
    assert dense["format"] == "dense" and dense["dtype"] == "float32"
    assert base_fingerprint(m.to(torch.bfloat16))["dtype"] == "bfloat16"
    q = tiny_model(seed=0, vocab_size=64)
    quantize_model(q)
    assert base_fingerprint(q)["format"] == "nf4"


@pytest.mark.parametrize("key, value, match", [
    ("step", -5, "step must be an integer >= 0"), ("step", 2.5, "step must"), ("step", True, "step must"),
    ("param_names", "x", "param_names"), ("optimizer_steps", {"nope": 1}, "optimizer_steps"),
    ("log_history", [{"step": "2"}], "log_history"), ("param_groups", [1], "param_groups"),
])
def test_trainer_state_values_are_checked(tmp_path, key, value, match):
    trainer(tmp_path).train(stop_after=2)
    path = tmp_path / "checkpoint-2" / "trainer_state.json"
    state = json.loads(path.read_text())
    state[key] = value
    path.write_text(json.dumps(state))
    with pytest.raises(CorruptCheckpointError, match=match):
        trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))

"""Checkpoints: everything the next step depends on, on disk without pickles, and read back exactly.

``checkpoint-<step>/`` holds the trainable weights (``trainable.safetensors``), the optimizer's moments and the
random generators' state (``optimizer.safetensors``), the step counter, the optimizer's hyperparameters and the loss
log (``trainer_state.json``), the run's fingerprint (`minilora.train.runs`), and the LoRA adapter in PEFT's format.
A checkpoint is written into a staging directory and swapped in whole, so a killed save never leaves half a
checkpoint under the real name.

Reading checks every file first: a damaged one (cut-off safetensors, broken JSON) is a `CorruptCheckpointError`
naming the file. Resuming from ``"latest"`` then falls back to the newest checkpoint that reads, with a warning
naming each damaged one it skipped; an explicitly named checkpoint that is damaged is refused.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict

import torch
from safetensors.torch import save_file

from ..io.atomic import write_dir
from ..io.safetensors_dir import read_safetensors
from . import distributed, runs
from .arguments import TrainingError

STATE_KEYS = ("step", "param_names", "optimizer_steps", "param_groups", "log_history")


class CorruptCheckpointError(TrainingError):
    """A checkpoint file cannot be read (cut off, damaged, or not what a checkpoint holds)."""


def save_checkpoint(trainer, path: str) -> str:
    """Write ``trainer``'s state as the directory ``path``.

    Several ranks: every rank takes part in making the sharded tensors whole (FSDP), rank 0 alone writes, so the
    files are exactly those of one process and any number of ranks can resume from them."""
    names = list(trainer.params)
    weights = {n: distributed.full_tensor(p.detach()).contiguous().cpu() for n, p in trainer.params.items()}
    opt_state = trainer.optimizer.state_dict()
    tensors, steps = {}, {}
    for idx in sorted(opt_state["state"]):  # the same order on every rank: the gathers pair up
        for key, value in opt_state["state"][idx].items():
            if key == "step":
                steps[names[idx]] = float(distributed.full_tensor(value))
            else:
                tensors[f"{names[idx]}::{key}"] = distributed.full_tensor(value.detach()).contiguous().cpu()
    from ..lora import lora_layers
    adapter = None
    if lora_layers(trainer.model):
        from ..io.adapters import adapter_state_dict
        adapter = adapter_state_dict(trainer.model)

    def fill(tmp: str) -> None:
        save_file(weights, os.path.join(tmp, "trainable.safetensors"))
        rng = {"rng.cpu": torch.get_rng_state()}
        if trainer.device.type == "cuda":
            rng["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
        save_file({**tensors, **rng}, os.path.join(tmp, "optimizer.safetensors"))
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                  for g in opt_state["param_groups"]]
        state = {"step": trainer.step, "param_names": names, "optimizer_steps": steps, "param_groups": groups,
                 "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else None,
                 "args": dict(asdict(trainer.args)), "log_history": trainer.log_history,
                 "run": runs.fingerprint(trainer)}
        _dump_json(os.path.join(tmp, "trainer_state.json"), state)
        if adapter is not None:
            from ..io.adapters import write_adapter
            write_adapter(trainer.model, tmp, tensors=adapter)

    if trainer.dist.is_main:
        write_dir(path, fill)
    distributed.barrier(trainer.dist)  # no rank moves on (or resumes) before the checkpoint exists
    return path


def read_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer state, trainable weights, optimizer and RNG tensors) of a checkpoint, every file checked."""
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        raise FileNotFoundError(f"{path!r} is not a minilora checkpoint (no trainer_state.json); pass a "
                                "checkpoint-<step> directory written by Trainer.save_checkpoint")
    try:
        with open(state_file, encoding="utf-8") as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{state_file} is damaged: not valid JSON ({e})") from None
    if not isinstance(state, dict) or not all(k in state for k in STATE_KEYS):
        raise CorruptCheckpointError(f"{state_file} is damaged: it lacks some of {', '.join(STATE_KEYS)}")
    problem = _state_problem(state)
    if problem:
        raise CorruptCheckpointError(f"{state_file} is damaged: {problem}")
    out = [state]
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        try:
            out.append(read_safetensors(os.path.join(path, name)))
        except (ValueError, FileNotFoundError) as e:
            raise CorruptCheckpointError(f"checkpoint {path}: {e}") from None
    if "rng.cpu" not in out[2]:
        raise CorruptCheckpointError(f"checkpoint {path}: optimizer.safetensors lacks the random generator state")
    return tuple(out)


def _state_problem(state: dict) -> str | None:
    """What is wrong with a trainer_state.json's values (None: nothing) — a hand-edited or damaged file must not
    make the run train a wrong number of steps or index past its parameters."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40
    if not count(state["step"]):
        return f"step must be an integer >= 0, got {state['step']!r}"
    names = state["param_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return "param_names must be a list of distinct parameter names"
    steps = state["optimizer_steps"]
    if not isinstance(steps, dict) or not all(k in names and isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and 0 <= v <= state["step"] for k, v in steps.items()):
        return "optimizer_steps must map parameter names to step counts between 0 and step"
    groups = state["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        return "param_groups must be a list of objects"
    log = state["log_history"]
    if not isinstance(log, list) or not all(isinstance(r, dict) and count(r.get("step")) for r in log):
        return "log_history must be a list of records, each with an integer step >= 0"
    return None


def read_latest(output_dir: str) -> tuple[str, tuple]:
    """The newest checkpoint of ``output_dir`` that reads, skipping (with a warning) damaged newer ones."""
    found = _checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step> directory in {output_dir!r} to resume from")
    damaged = []
    for path in found:
        try:
            contents = read_checkpoint(path)
        except (CorruptCheckpointError, FileNotFoundError) as e:
            damaged.append(str(e))
            continue
        if damaged:
            warnings.warn(f"resuming from {path}, the newest checkpoint that reads; skipped "
                          f"{len(damaged)} damaged newer one(s): {'; '.join(damaged)}", stacklevel=3)
        return path, contents
    raise CorruptCheckpointError(f"every checkpoint in {output_dir!r} is damaged: {'; '.join(damaged)}")


def load_checkpoint(trainer, path: str) -> str:
    """Restore ``trainer`` from a checkpoint directory (or "latest" in its output_dir); returns the path used."""
    if path == "latest":
        path, (state, weights, tensors) = read_latest(trainer.args.output_dir)
    else:
        state, weights, tensors = read_checkpoint(path)
    names = state["param_names"]
    if names != list(trainer.params):
        raise TrainingError(f"checkpoint {path} trains other parameters than this model ({len(names)} vs "
                            f"{len(trainer.params)}, first differing name: "
                            f"{next((a for a, b in zip(names, trainer.params) if a != b), '?')}); resume with the "
                            "same model and LoRA settings")
    for n, p in trainer.params.items():
        if n not in weights:
            raise CorruptCheckpointError(f"checkpoint {path}: trainable.safetensors lacks {n}")
        if weights[n].shape != p.shape:
            raise TrainingError(f"checkpoint tensor {n} has shape {tuple(weights[n].shape)}, the model "
                                f"{tuple(p.shape)}: resume with the same model and LoRA rank")
    if "run" in state:
        diffs = runs.differences(state["run"], runs.fingerprint(trainer))
        if diffs:
            raise TrainingError(f"checkpoint {path} belongs to another run configuration: {'; '.join(diffs)}. "
                                "Resume with the settings it was made with, or start a new run (a new output "
                                "directory, or overwrite_output_dir / --overwrite_output_dir)")
    else:
        warnings.warn(f"checkpoint {path} records no run fingerprint (an older minilora wrote it): it cannot be "
                      "checked to belong to this run's model, data and settings", stacklevel=3)
    with torch.no_grad():
        for n, p in trainer.params.items():
            p.copy_(distributed.shard_like(weights[n], p))  # FSDP: this rank's shard of the full tensor
    opt_state = {"state": {}, "param_groups": []}
    for i, n in enumerate(names):
        like = trainer.params[n]
        st = {key.split("::", 1)[1]: distributed.shard_like(t.to(trainer.device), like)
              for key, t in tensors.items() if key.split("::")[0] == n}
        if n in state["optimizer_steps"]:
            st["step"] = torch.tensor(state["optimizer_steps"][n])
        if st:
            opt_state["state"][i] = st
    for g in state["param_groups"]:
        g = dict(g, params=list(range(len(names))))
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        opt_state["param_groups"].append(g)
    trainer.optimizer.load_state_dict(opt_state)
    if state.get("scaler") and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], trainer.device)
    trainer.step = state["step"]
    trainer.log_history = [r for r in state["log_history"] if r["step"] <= trainer.step]
    return path


def _checkpoints(output_dir: str) -> list[str]:
    """checkpoint-<step> directories of output_dir, newest first."""
    found = [d for d in os.listdir(output_dir) if runs.is_checkpoint_name(d)] if os.path.isdir(output_dir) else []
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d.split("-", 1)[1]), reverse=True)]


def latest_checkpoint(output_dir: str) -> str:
    """The newest checkpoint-<step> of output_dir (by step; not checked: `read_latest` also reads it)."""
    found = _checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step> directory in {output_dir!r} to resume from")
    return found[0]


def _dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)

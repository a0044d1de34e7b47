"""Checkpoints: everything the next step depends on, on disk without pickles, and read back exactly.

``checkpoint-<step>/`` holds the trainable weights (``trainable.safetensors``), the optimizer's moments and the
random generators' state (``optimizer.safetensors``), the step counter, the optimizer's hyperparameters and the loss
log (``trainer_state.json``), and the LoRA adapter in PEFT's format. A checkpoint is written into a staging
directory and swapped in whole, so a killed save never leaves half a checkpoint under the real name.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from ..io.atomic import write_dir
from . import distributed
from .arguments import TrainingError


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
                 "args": dict(asdict(trainer.args)), "log_history": trainer.log_history}
        _dump_json(os.path.join(tmp, "trainer_state.json"), state)
        if adapter is not None:
            from ..io.adapters import write_adapter
            write_adapter(trainer.model, tmp, tensors=adapter)

    if trainer.dist.is_main:
        write_dir(path, fill)
    distributed.barrier(trainer.dist)  # no rank moves on (or resumes) before the checkpoint exists
    return path


def load_checkpoint(trainer, path: str) -> None:
    """Restore ``trainer`` from a checkpoint directory (or "latest" in its output_dir)."""
    if path == "latest":
        path = latest_checkpoint(trainer.args.output_dir)
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        raise FileNotFoundError(f"{path!r} is not a minilora checkpoint (no trainer_state.json); pass a "
                                "checkpoint-<step> directory written by Trainer.save_checkpoint")
    with open(state_file) as f:
        state = json.load(f)
    names = state["param_names"]
    if names != list(trainer.params):
        raise TrainingError(f"checkpoint {path} trains other parameters than this model ({len(names)} vs "
                            f"{len(trainer.params)}, first differing name: "
                            f"{next((a for a, b in zip(names, trainer.params) if a != b), '?')}); resume with the "
                            "same model and LoRA settings")
    weights = load_file(os.path.join(path, "trainable.safetensors"))
    with torch.no_grad():
        for n, p in trainer.params.items():
            if weights[n].shape != p.shape:
                raise TrainingError(f"checkpoint tensor {n} has shape {tuple(weights[n].shape)}, the model "
                                    f"{tuple(p.shape)}: resume with the same model and LoRA rank")
            p.copy_(distributed.shard_like(weights[n], p))  # FSDP: this rank's shard of the full tensor
    tensors = load_file(os.path.join(path, "optimizer.safetensors"))
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


def latest_checkpoint(output_dir: str) -> str:
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()] \
        if os.path.isdir(output_dir) else []
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step> directory in {output_dir!r} to resume from")
    return os.path.join(output_dir, max(found, key=lambda d: int(d.split("-")[-1])))


def _dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)

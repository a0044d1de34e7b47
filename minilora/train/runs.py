"""One run per output directory: a run's logs and checkpoints are never mixed with another run's.

- A used ``output_dir`` (it holds a training log, a summary or a ``checkpoint-<step>``) is refused, unless the run
  resumes from a checkpoint or ``overwrite_output_dir`` is set; overwriting deletes the old run's files first
  (its checkpoints and logs, nothing else), so no stale checkpoint of the old run survives to be resumed later.
- Every checkpoint records the run's *fingerprint*: the model, the LoRA settings, a hash of the training data and
  each hyperparameter that changes the trajectory. Resuming compares it with the resuming run and names the keys
  that differ. ``max_steps`` is left out on purpose: resuming a finished run with a larger ``max_steps`` is how a
  run is extended (the learning-rate schedule then stretches to the new end).
- `new_run_dir` gives each run started without an explicit directory its own ``outputs/run-<date>-<time>``, so
  the default command can be run again and again.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

LOG_FILES = ("train_log.csv", "train_log.json", "summary.json")

# TrainingArguments fields that change the sequence of weights a run goes through (see the module docstring)
TRAJECTORY_ARGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "warmup_steps",
                   "lr_scheduler_type", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                   "optim", "seed", "mixed_precision", "packing", "max_seq_length")


def is_checkpoint_name(name: str) -> bool:
    return name.startswith("checkpoint-") and name.split("-", 1)[1].isdigit()


def run_files(output_dir: str) -> list[str]:
    """The names in ``output_dir`` that a training run wrote (logs, summary, checkpoints)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir) if n in LOG_FILES or is_checkpoint_name(n))


def check_output_dir(output_dir: str, resuming: bool = False, overwrite: bool = False,
                     flag: str = "overwrite_output_dir=True") -> None:
    """Refuse an output directory that is a file, or that holds another run (unless resuming or overwriting)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output directory {output_dir!r} is an existing file; pass a directory path "
                                 "(it is created if missing)")
    used = run_files(output_dir)
    if used and not resuming and not overwrite:
        raise FileExistsError(f"output directory {output_dir!r} already holds a run ({', '.join(used[:4])}"
                              f"{', …' if len(used) > 4 else ''}); a new run there would mix its logs and "
                              f"checkpoints with the old ones. Pick a new output directory, resume the old run "
                              f"(resume_from_checkpoint='latest'), or pass {flag} to delete the old run first")


def clear_run(output_dir: str) -> list[str]:
    """Delete the files an earlier run wrote in ``output_dir`` (checkpoints and logs only); returns their names."""
    removed = run_files(output_dir)
    for name in removed:
        full = os.path.join(output_dir, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)
    return removed


def new_run_dir(root: str = "outputs") -> str:
    """Create and return ``root/run-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, … when that name is taken)."""
    os.makedirs(root, exist_ok=True)
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)  # atomic: two runs started in the same second get different directories
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run directory name under {root!r} for {stamp}")


def latest_run_dir(root: str = "outputs") -> str | None:
    """The most recently started ``root/run-*`` directory that holds a checkpoint, or None."""
    if not os.path.isdir(root):
        return None

    def order(name):  # run-20261129-110000-10 comes after run-20261129-110000-9
        parts = name.split("-")
        return parts[1:3], int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 1

    runs = [n for n in os.listdir(root) if n.startswith("run-") and len(n.split("-")) >= 3]
    for name in sorted(runs, key=order, reverse=True):
        full = os.path.join(root, name)
        if os.path.isdir(full) and any(is_checkpoint_name(n) for n in os.listdir(full)):
            return full
    return None


def data_hash(rows) -> str:
    """A short hash of the training rows' token ids and labels, in order."""
    h = hashlib.sha256()
    for row in rows:
        for example in row:
            h.update(repr((list(example.input_ids), list(example.labels))).encode())
    return h.hexdigest()[:16]


def fingerprint(trainer) -> dict:
    """What a checkpoint must share with the run that resumes it (see the module docstring)."""
    model, args = trainer.model, trainer.args
    cfg = getattr(model, "peft_config", None) or {}
    out = {"model": getattr(model, "name_or_path", None) or type(model).__name__,
           "lora": {k: (sorted(v) if isinstance(v, (list, tuple, set)) else v) for k, v in sorted(cfg.items())
                    if k in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "bias")},
           "data": data_hash(trainer.rows), "data_rows": len(trainer.rows)}
    out.update({name: getattr(args, name) for name in TRAJECTORY_ARGS})
    return out


def differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every fingerprint key whose value differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in keys
            if saved.get(k) != current.get(k)]

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

from ..io.atomic import is_within

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


def check_output_dir(output_dir: str, resuming: bool | str = False, overwrite: bool = False,
                     flag: str = "overwrite_output_dir=True") -> None:
    """Refuse an output directory that is a file, or that holds another run (unless resuming or overwriting).
    ``resuming``: the checkpoint being resumed (a path, or "latest"); a used directory is the resumed run's own only
    if the checkpoint lies inside it — resuming run A into run B's directory would replace B's logs and
    checkpoints, so it is refused (an empty directory may receive a resumed run)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output directory {output_dir!r} is an existing file; pass a directory path "
                                 "(it is created if missing)")
    used = run_files(output_dir)
    if used and isinstance(resuming, str) and resuming != "latest" and not overwrite:
        checkpoint, run = os.path.realpath(resuming), os.path.realpath(output_dir)
        if not checkpoint.startswith(run + os.sep):
            raise FileExistsError(f"output directory {output_dir!r} holds another run ({', '.join(used[:4])}) "
                                  f"than the checkpoint {resuming!r} being resumed; resuming into it would replace "
                                  "that run's logs and checkpoints. Resume into the checkpoint's own run directory "
                                  "or an empty one")
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
    out.update(global_batch=trainer.global_batch, base=trainer.base_fingerprint)
    return out


def base_fingerprint(model) -> dict:
    """What the frozen base is: its weight format, its compute dtype and a hash of its weights. The hash reads
    every tensor's name, shape and dtype and up to 4096 evenly spaced values of each, so other weights at the same
    path (or the same weights in another format) give another hash without reading all of a large model's bytes.
    Computed once per run, before any sharding, so every rank computes the same one."""
    import torch

    from ..linear4bit import Linear4bit
    from ..linear8bit import Linear8bit
    fmt = "nf4" if any(isinstance(m, Linear4bit) for m in model.modules()) else \
        "int8" if any(isinstance(m, Linear8bit) for m in model.modules()) else "dense"
    h, dtype = hashlib.sha256(), None
    frozen = [(n, t) for n, t in model.named_parameters() if not t.requires_grad] + list(model.named_buffers())
    for name, t in sorted(frozen, key=lambda item: item[0]):
        if "lora_" in name:
            continue
        if dtype is None and t.is_floating_point():
            dtype = str(t.dtype).removeprefix("torch.")
        flat = t.detach().reshape(-1)
        picked = flat[::max(1, flat.numel() // 4096)][:4096].cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(picked.view(torch.uint8).numpy().tobytes() if picked.numel() else b"")
    return {"format": fmt, "dtype": dtype, "weights": h.hexdigest()[:16]}


def differences(saved: dict, current: dict) -> list[str]:
    """'key: saved -> current' for every fingerprint key whose value differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in keys
            if saved.get(k) != current.get(k)]


# --- where a run writes, decided and checked before the model loads ----------------------------------------------
RUNS_ROOT = "outputs"


class RunSetupError(ValueError):
    """A run's paths would mix runs or destroy data; refused before anything is loaded. ``option`` names the
    setting at fault (the command line shows it as ``--option``)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def resolve_paths(cfg) -> None:
    """Fill in ``cfg.output_dir`` for a resume that names none (``latest``: the newest run under outputs/ with a
    checkpoint; a checkpoint path: its directory). A new run's directory is made later, by `claim_paths`."""
    resume = cfg.resume_from_checkpoint
    if cfg.output_dir is None and resume:
        if resume == "latest":
            cfg.output_dir = latest_run_dir(RUNS_ROOT)
            if cfg.output_dir is None:
                raise RunSetupError("resume_from_checkpoint", f"'latest': no run under {RUNS_ROOT}/ has a checkpoint "
                                    "(runs write them with save_steps N); pass the output_dir of the run to resume")
        else:
            cfg.output_dir = os.path.dirname(os.path.abspath(resume))


def check_paths(cfg) -> None:
    """Refuse paths that would mix runs or destroy data (nothing is created here)."""
    from ..io.atomic import SaveTargetError, check_save_target
    flag = "overwrite_output_dir"
    if cfg.output_dir is not None:
        try:
            check_output_dir(cfg.output_dir, resuming=cfg.resume_from_checkpoint or False,
                             overwrite=cfg.overwrite_output_dir, flag=flag)
        except (FileExistsError, NotADirectoryError) as e:
            raise RunSetupError("output_dir", str(e)) from None
    if not (cfg.save_model or cfg.save_gguf) or cfg.save_path is None:
        return
    if cfg.output_dir is not None:
        save, run = os.path.realpath(cfg.save_path), os.path.realpath(cfg.output_dir)
        if is_within(run, save):
            raise RunSetupError("save_path", f"{cfg.save_path!r} would replace the run directory {cfg.output_dir!r} "
                                "(its logs and checkpoints); save to a sub-directory of it or elsewhere")
    model = [os.path.abspath(cfg.model_name)] if isinstance(cfg.model_name, str) and os.path.exists(cfg.model_name) \
        else []
    try:
        check_save_target(cfg.save_path, model, overwrite=cfg.overwrite_output_dir, flag=flag)
    except (SaveTargetError, FileExistsError, NotADirectoryError) as e:
        raise RunSetupError("save_path", str(e)) from None


def claim_paths(cfg, is_main: bool = True, share=None) -> None:
    """Give a run without ``output_dir`` its own new ``outputs/run-<date>-<time>`` and a default save path inside it.
    Under torchrun only rank 0 (``is_main``) makes the directory; ``share(value)`` hands rank 0's name to the others."""
    if cfg.output_dir is None:
        name = new_run_dir(RUNS_ROOT) if is_main else None
        cfg.output_dir = share(name) if share is not None else name
    if cfg.save_path is None:
        cfg.save_path = os.path.join(cfg.output_dir, "model")

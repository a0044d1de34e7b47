"""What a training run is asked to do: `TrainingArguments`, every value checked when it is made."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .schedules import SCHEDULES

OPTIMIZERS = ("adamw_torch", "adamw", "adamw_8bit", "sgd")  # adamw_8bit: minilora.train.adamw8bit
PRECISIONS = (None, "fp32", "bf16", "fp16")
PARALLEL = ("ddp", "fsdp")  # several processes (torchrun): a full model per rank, or every weight sharded


def check_parallel(parallel: str | None) -> str | None:
    """The one check of a ``parallel`` value (None: one process, or ddp by default under torchrun)."""
    if parallel not in (None, *PARALLEL):
        raise ValueError(f"parallel={parallel!r}: choose 'ddp' (a full model per rank) or 'fsdp' (sharded)")
    return parallel


def mixed_precision_for(compute_dtype: torch.dtype) -> str | None:
    """The autocast a run of weights in ``compute_dtype`` needs, decided where that dtype is first known: float16
    gets "fp16" (autocast with loss scaling: its range is small); bfloat16 and float32 weights already compute in
    their own dtype, so None."""
    return "fp16" if compute_dtype == torch.float16 else None


@dataclass
class TrainingArguments:
    output_dir: str = "outputs"
    overwrite_output_dir: bool = False  # a used output_dir is refused unless resuming or this is set (runs.py)
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 4
    max_steps: int = 60
    learning_rate: float = 2e-4
    warmup_steps: int = 5
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    seed: int = 3407
    logging_steps: int = 1
    save_steps: int = 0  # 0: no intermediate checkpoints
    eval_steps: int = 0  # 0: evaluate only when asked
    per_device_eval_batch_size: int = 8
    mixed_precision: str | None = None  # None/"fp32": no autocast; "bf16" or "fp16": autocast (+ loss scaling)
    packing: bool = False
    parallel: str | None = None  # several processes (torchrun): "ddp" (default there) or "fsdp"; ignored in one
    global_train_batch_size: int | None = None  # examples per micro-batch over all ranks; None: per_device × ranks
    max_seq_length: int = 2048
    progress_bar: bool = True
    stop_at_loss: float | None = None  # stop early once the loss stayed below this for `stop_patience` steps
    stop_patience: int = 3
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        positive = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "logging_steps",
                    "per_device_eval_batch_size", "max_seq_length")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "save_steps", "eval_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        for name, low, high in (("weight_decay", 0, None), ("max_grad_norm", 0, None), ("adam_beta1", 0, 1),
                                ("adam_beta2", 0, 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    value < low or (high is not None and value >= high):
                raise ValueError(f"{name} must be a finite number in [{low}, {high if high is not None else 'inf'})"
                                 f", got {value!r}")
        if isinstance(self.adam_epsilon, bool) or not isinstance(self.adam_epsilon, (int, float)) or \
                not (math.isfinite(self.adam_epsilon) and self.adam_epsilon > 0):
            raise ValueError(f"adam_epsilon must be a finite number > 0, got {self.adam_epsilon!r}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r}: choose one of {', '.join(SCHEDULES)}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim={self.optim!r}: minilora implements {', '.join(OPTIMIZERS)}")
        if self.stop_at_loss is not None and not (self.stop_at_loss > 0 and math.isfinite(self.stop_at_loss)):
            raise ValueError(f"stop_at_loss must be a positive number (or None: run all max_steps), "
                             f"got {self.stop_at_loss}")
        if not isinstance(self.stop_patience, int) or self.stop_patience < 1:
            raise ValueError(f"stop_patience must be a positive integer, got {self.stop_patience!r}")
        check_parallel(self.parallel)
        if self.global_train_batch_size is not None and (not isinstance(self.global_train_batch_size, int)
                                                         or self.global_train_batch_size < 1):
            raise ValueError(f"global_train_batch_size must be a positive integer or None, got "
                             f"{self.global_train_batch_size!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose fp32, bf16 or fp16")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a checkpoint for another model, ...)."""

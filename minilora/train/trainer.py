"""The training loop: AdamW, warm-up schedules, exact gradient accumulation, clipping, mixed precision, logging,
evaluation, atomic checkpoints and a resume that continues exactly.

Gradient accumulation, done right. A step sees k micro-batches. Averaging each micro-batch's mean loss weights a
token in a short micro-batch more than one in a long micro-batch ("a mean of means"). The loss we want is the
sum of every trained token's loss over the whole step divided by the number of trained tokens N in the step:
$L = \\frac{1}{N} \\sum_{j=1}^{k} \\sum_{t \\in \\text{batch}_j} \\ell_t$. So we count N first and pass it to every
forward as ``num_items_in_batch``: each micro-batch returns its *sum* divided by N, the backward passes add up, and
the gradient is exactly that of one big batch.

Resume, exactly. A checkpoint holds everything the next step depends on: the trainable weights and the AdamW
moments (safetensors), the step counter, the loss log and the random generators' state (JSON + safetensors —
no pickles). The data order is a pure function of (seed, epoch), so it needs no state at all.
"""
from __future__ import annotations

import csv
import json
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file, save_file

from .data import IGNORE_INDEX, Example, collate, count_trained_tokens
from .packing import collate_packed, pack_examples
from .schedules import SCHEDULES, lr_multiplier

OPTIMIZERS = ("adamw_torch", "adamw", "sgd")
PRECISIONS = (None, "fp32", "bf16", "fp16")


@dataclass
class TrainingArguments:
    output_dir: str = "outputs"
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
    max_seq_length: int = 2048
    progress_bar: bool = True
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
        if self.lr_scheduler_type not in SCHEDULES:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r}: choose one of {', '.join(SCHEDULES)}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim={self.optim!r}: minilora implements {', '.join(OPTIMIZERS)} (8-bit AdamW "
                             "needs bitsandbytes on a GPU; for LoRA the optimizer state is tiny anyway)")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: choose fp32, bf16 or fp16")


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a checkpoint for another model, ...)."""


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or on CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def write_atomic(path: str, write) -> None:
    """Write a file through a temporary name in the same directory, then rename (never half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_output_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"output directory {path!r} is an existing file; pass a directory path "
                                 "(it is created if missing)")


class Trainer:
    """Train the parameters of ``model`` that require grad on tokenized ``train_dataset`` (list of Example)."""

    def __init__(self, model, args: TrainingArguments, train_dataset: list[Example],
                 eval_dataset: list[Example] | None = None, pad_token_id: int = 0):
        if not train_dataset:
            raise ValueError("train_dataset is empty: an empty dataset cannot train anything")
        if not all(isinstance(e, Example) for e in train_dataset):
            raise TypeError("train_dataset must be a list of minilora.train.Example (use build_examples/chunk_text)")
        self.model, self.args, self.pad_token_id = model, args, pad_token_id
        self.eval_dataset = eval_dataset
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters: add LoRA adapters with get_peft_model first")
        self.device = next(iter(self.params.values())).device
        if args.packing:
            order = torch.randperm(len(train_dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
            self.rows = pack_examples([train_dataset[i] for i in order], args.max_seq_length)
        else:
            self.rows = [[e] for e in train_dataset]
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.mixed_precision == "fp16")
        self.step = 0
        self.log_history: list[dict] = []

    # --- data order: a pure function of (seed, epoch) -------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.args.seed * 1000 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def micro_batch(self, index: int) -> dict:
        """The ``index``-th micro-batch of the run (epochs wrap around; each epoch has its own shuffle)."""
        B, n = self.args.per_device_train_batch_size, len(self.rows)
        picked = []
        for pos in range(index * B, index * B + B):
            epoch, k = divmod(pos, n)
            picked.append(self.rows[self._epoch_order(epoch)[k]])
        if self.args.packing:
            batch = collate_packed(picked, self.pad_token_id)
        else:
            batch = collate([row[0] for row in picked], self.pad_token_id)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _make_optimizer(self):
        a = self.args
        params = list(self.params.values())
        if a.optim == "sgd":
            return torch.optim.SGD(params, lr=a.learning_rate, weight_decay=a.weight_decay)
        return torch.optim.AdamW(params, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon,
                                 weight_decay=a.weight_decay, foreach=False)

    def _autocast(self):
        mp = self.args.mixed_precision
        enabled = mp in ("bf16", "fp16")
        dtype = torch.bfloat16 if mp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    # --- one optimizer step ---------------------------------------------------------------------------------
    def training_step(self) -> dict:
        a, model = self.args, self.model
        model.train()
        k = a.gradient_accumulation_steps
        batches = [self.micro_batch(self.step * k + j) for j in range(k)]
        n_items = sum(count_trained_tokens(b["labels"]) for b in batches)
        if n_items == 0:
            raise TrainingError(f"step {self.step + 1}: every label of the batch is masked (-100); check the "
                                "response marker and max_seq_length")
        n_tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b and b["attention_mask"].dim() == 2
                       else b["input_ids"].numel() for b in batches)
        loss_total = 0.0
        for b in batches:
            with self._autocast():
                out = model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
                            position_ids=b.get("position_ids"), num_items_in_batch=n_items)
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {self.step + 1}: training diverged. "
                                    "Lower learning_rate, keep max_grad_norm on, or use fp32/bf16 instead of fp16. "
                                    "Nothing of this step was saved.")
            self.scaler.scale(loss).backward()
            loss_total += loss.item()
        self.scaler.unscale_(self.optimizer)
        params = list(self.params.values())
        if a.max_grad_norm and a.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        else:
            grad_norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        lr = a.learning_rate * lr_multiplier(self.step, a.max_steps, a.warmup_steps, a.lr_scheduler_type)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not torch.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise TrainingError(f"the gradient norm became {grad_norm.item()} at step {self.step + 1}: lower "
                                "learning_rate or use fp32. Nothing of this step was saved.")
        self.scaler.step(self.optimizer)  # with fp16 loss scaling, a step with inf gradients is skipped
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss_total, "lr": lr, "grad_norm": float(grad_norm),
                "trained_tokens": n_items, "tokens": n_tokens}

    # --- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: list[Example] | None = None) -> dict:
        """Mean loss over every trained token of the held-out examples (a token-weighted mean)."""
        dataset = dataset if dataset is not None else self.eval_dataset
        if not dataset:
            raise ValueError("no evaluation dataset: pass eval_dataset to Trainer or a dataset to evaluate()")
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        bs = self.args.per_device_eval_batch_size
        for i in range(0, len(dataset), bs):
            b = {k: v.to(self.device) for k, v in collate(dataset[i:i + bs], self.pad_token_id).items()}
            n = count_trained_tokens(b["labels"])
            with self._autocast():
                out = self.model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
                                 num_items_in_batch=1)  # returns the sum over tokens
            total, count = total + out.loss.item(), count + n
        self.model.train(was_training)
        return {"eval_loss": total / max(count, 1), "eval_tokens": count}

    # --- the loop -------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None, stop_after: int | None = None) -> dict:
        """Run until ``max_steps`` (or ``stop_after`` steps, to simulate an interruption). Returns a summary."""
        from tqdm.auto import tqdm
        a = self.args
        check_output_dir(a.output_dir)
        os.makedirs(a.output_dir, exist_ok=True)
        if resume_from_checkpoint:
            self.load_checkpoint(resume_from_checkpoint)
        else:
            torch.manual_seed(a.seed)
        self._rewrite_csv()
        end = a.max_steps if stop_after is None else min(a.max_steps, stop_after)
        bar = tqdm(total=a.max_steps, initial=self.step, disable=not a.progress_bar, desc="training", unit="step")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_time = time.perf_counter()
        while self.step < end:
            t0 = time.perf_counter()
            record = self.training_step()
            seconds = time.perf_counter() - t0
            record.update(seconds=round(seconds, 4), tokens_per_s=round(record["tokens"] / seconds, 1),
                          peak_mem_gib=round(peak_memory_gib(self.device), 4))
            if a.eval_steps and self.step % a.eval_steps == 0 and self.eval_dataset:
                record.update(self.evaluate())
            if self.step % a.logging_steps == 0 or self.step == a.max_steps:
                self.log_history.append(record)
                self._append_csv(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if a.save_steps and self.step % a.save_steps == 0:
                self.save_checkpoint()
        bar.close()
        runtime = time.perf_counter() - start_time
        self._write_json_log()
        losses = [r["loss"] for r in self.log_history]
        return {"global_step": self.step, "train_runtime": runtime,
                "train_loss": sum(losses) / len(losses) if losses else float("nan"), "log_history": self.log_history}

    # --- logs -----------------------------------------------------------------------------------------------
    CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "trained_tokens", "tokens", "seconds", "tokens_per_s",
                  "peak_mem_gib", "eval_loss")

    def _csv_path(self):
        return os.path.join(self.args.output_dir, "train_log.csv")

    def _rewrite_csv(self):
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.log_history)
        write_atomic(self._csv_path(), write)

    def _append_csv(self, record):
        with open(self._csv_path(), "a", newline="") as f:
            csv.DictWriter(f, self.CSV_FIELDS, extrasaction="ignore").writerow(record)

    def _write_json_log(self):
        path = os.path.join(self.args.output_dir, "train_log.json")
        write_atomic(path, lambda tmp: _dump_json(tmp, self.log_history))

    # --- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | None = None) -> str:
        """Write ``output_dir/checkpoint-<step>`` through a temporary directory and one rename."""
        path = path or os.path.join(self.args.output_dir, f"checkpoint-{self.step}")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-checkpoint-", dir=parent)
        try:
            names = list(self.params)
            save_file({n: p.detach().contiguous().cpu() for n, p in self.params.items()},
                      os.path.join(tmp, "trainable.safetensors"))
            opt_state = self.optimizer.state_dict()
            tensors, steps = {}, {}
            for idx, st in opt_state["state"].items():
                for key, value in st.items():
                    if key == "step":
                        steps[names[idx]] = float(value)
                    else:
                        tensors[f"{names[idx]}::{key}"] = value.detach().contiguous().cpu()
            rng = {"rng.cpu": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["rng.cuda"] = torch.cuda.get_rng_state(self.device)
            save_file({**tensors, **rng}, os.path.join(tmp, "optimizer.safetensors"))
            groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                      for g in opt_state["param_groups"]]
            state = {"step": self.step, "param_names": names, "optimizer_steps": steps, "param_groups": groups,
                     "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                     "args": {k: v for k, v in asdict(self.args).items()}, "log_history": self.log_history}
            _dump_json(os.path.join(tmp, "trainer_state.json"), state)
            from ..lora import lora_layers
            if lora_layers(self.model):
                from ..io.adapters import save_adapter
                save_adapter(self.model, tmp)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def load_checkpoint(self, path: str) -> None:
        if path == "latest":
            path = latest_checkpoint(self.args.output_dir)
        state_file = os.path.join(path, "trainer_state.json")
        if not os.path.isfile(state_file):
            raise FileNotFoundError(f"{path!r} is not a minilora checkpoint (no trainer_state.json); pass a "
                                    "checkpoint-<step> directory written by Trainer.save_checkpoint")
        with open(state_file) as f:
            state = json.load(f)
        names = state["param_names"]
        if names != list(self.params):
            raise TrainingError(f"checkpoint {path} trains other parameters than this model ({len(names)} vs "
                                f"{len(self.params)}, first differing name: "
                                f"{next((a for a, b in zip(names, self.params) if a != b), '?')}); resume with the "
                                "same model and LoRA settings")
        weights = load_file(os.path.join(path, "trainable.safetensors"))
        with torch.no_grad():
            for n, p in self.params.items():
                if weights[n].shape != p.shape:
                    raise TrainingError(f"checkpoint tensor {n} has shape {tuple(weights[n].shape)}, the model "
                                        f"{tuple(p.shape)}: resume with the same model and LoRA rank")
                p.copy_(weights[n])
        tensors = load_file(os.path.join(path, "optimizer.safetensors"))
        opt_state = {"state": {}, "param_groups": []}
        for i, n in enumerate(names):
            st = {key.split("::", 1)[1]: t.to(self.device) for key, t in tensors.items() if key.split("::")[0] == n}
            if n in state["optimizer_steps"]:
                st["step"] = torch.tensor(state["optimizer_steps"][n])
            if st:
                opt_state["state"][i] = st
        for g in state["param_groups"]:
            g = dict(g, params=list(range(len(names))))
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            opt_state["param_groups"].append(g)
        self.optimizer.load_state_dict(opt_state)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(tensors["rng.cpu"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = state["step"]
        self.log_history = [r for r in state["log_history"] if r["step"] <= self.step]


def latest_checkpoint(output_dir: str) -> str:
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()] \
        if os.path.isdir(output_dir) else []
    if not found:
        raise FileNotFoundError(f"no checkpoint-<step> directory in {output_dir!r} to resume from")
    return os.path.join(output_dir, max(found, key=lambda d: int(d.split("-")[-1])))


def _dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)

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

Several processes (torchrun, see distributed.py): micro-batch i of the run is the same global batch of
``global_train_batch_size`` examples whatever the number of ranks; rank r reads its contiguous slice of it. The
trained-token count N is summed over ranks before the first forward, so each rank's loss is (its tokens' loss sum)/N
and the ranks' losses add up to the one-process loss. DDP and FSDP both AVERAGE gradients over the W ranks (they
divide the summed gradient by W); each rank therefore backpropagates W × its loss, which turns that average back into
the plain sum — the gradient of one process with the whole batch. (Scaling the loss, rather than summing gradients by
hand under no_sync, keeps DDP's and FSDP's own overlapped communication.) Logging, evaluation output and saving
happen on rank 0; checkpoints hold full tensors, so any number of ranks resumes from any checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import time

import torch

from ..io.atomic import write_file, write_json
from ..memory.measure import peak_memory_gib
from . import checkpoints, distributed, runs
from .adamw8bit import AdamW8bit
from .arguments import OPTIMIZERS, PRECISIONS, TrainingArguments, TrainingError  # noqa: F401  (public names)
from .data import Example, check_examples, collate, count_trained_tokens
from .packing import collate_packed, pack_examples, real_tokens
from .schedules import lr_multiplier
from .step_checks import broken_frozen_weight, check_batch_ids


class Trainer:
    """Train the parameters of ``model`` that require grad on tokenized ``train_dataset`` (list of Example)."""

    def __init__(self, model, args: TrainingArguments, train_dataset: list[Example],
                 eval_dataset: list[Example] | None = None, pad_token_id: int = 0,
                 dist: distributed.DistContext | None = None):
        if not train_dataset:
            raise ValueError("train_dataset is empty: an empty dataset cannot train anything")
        check_examples(train_dataset, args.max_seq_length)  # lengths, integer ids, nothing past max_seq_length
        self.model, self.args, self.pad_token_id = model, args, pad_token_id
        self.eval_dataset = eval_dataset
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("the model has no trainable parameters: add LoRA adapters with get_peft_model first")
        self.device = next(iter(self.params.values())).device
        # where this process stands: the context of the `distributed.session` the run is inside, or (None) the
        # group someone already joined — the trainer never joins or leaves a process group itself
        self.dist = dist if dist is not None else distributed.context(args.parallel)
        self.base_fingerprint = runs.base_fingerprint(model)  # before sharding: the same on every rank
        self.engine = model  # what the training step calls: the model, or its DDP wrapper
        if self.dist.enabled:
            self.device = distributed.device_for(self.dist)
            self.engine = distributed.wrap_model(model, self.dist, self.device)
            # FSDP replaced the parameters by their shards (DTensors): the optimizer must see those
            self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.global_batch = args.global_train_batch_size or args.per_device_train_batch_size * self.dist.world_size
        if self.global_batch < self.dist.world_size:
            raise ValueError(f"global_train_batch_size={self.global_batch} is smaller than the {self.dist.world_size} "
                             "ranks: every rank needs at least one example per micro-batch")
        if args.packing:
            order = torch.randperm(len(train_dataset), generator=torch.Generator().manual_seed(args.seed)).tolist()
            self.rows = pack_examples([train_dataset[i] for i in order], args.max_seq_length)
        else:
            self.rows = [[e] for e in train_dataset]
        self.optimizer = self._make_optimizer()
        half = [n for n, p in self.params.items() if p.dtype == torch.float16]
        if half and args.mixed_precision == "fp16":
            raise ValueError(f"{len(half)} trainable parameters are float16 (e.g. {half[0]}): fp16 loss scaling needs "
                             "fp32 trainable weights — create the adapters with get_peft_model (it keeps them fp32) "
                             "or call .float() on them")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.mixed_precision == "fp16")
        self.step = 0
        self.log_history: list[dict] = []
        self.resumed_from: str | None = None

    # --- data order: a pure function of (seed, epoch) -------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.args.seed * 1000 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def micro_batch(self, index: int, device: torch.device | None = None) -> dict:
        """This rank's part of the ``index``-th global micro-batch of the run (epochs wrap around; each epoch has
        its own shuffle). One process: the whole global batch."""
        G, n = self.global_batch, len(self.rows)
        lo, hi = distributed.rank_slice(G, self.dist.rank, self.dist.world_size)
        picked = []
        for pos in range(index * G + lo, index * G + hi):
            epoch, k = divmod(pos, n)
            picked.append(self.rows[self._epoch_order(epoch)[k]])
        if self.args.packing:  # training on a GPU, every micro-batch has one shape (compiled attention is built per
            # shape); elsewhere rows are padded to the longest, as unpacked batches are (full rows only add padding)
            pad_to = self.args.max_seq_length if self.device.type == "cuda" else None
            batch = collate_packed(picked, self.pad_token_id, pad_to=pad_to)
        else:
            batch = collate([row[0] for row in picked], self.pad_token_id)
        return self._to_device(batch, self.device if device is None else device)

    @staticmethod
    def _to_device(batch: dict, device: torch.device) -> dict:
        if device.type != "cuda":
            return {k: v.to(device) for k, v in batch.items()}
        # pinned + non_blocking: the copy is queued behind the GPU's work instead of making the host wait for it
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}

    def _make_optimizer(self):
        a = self.args
        params = list(self.params.values())
        if a.optim == "sgd":
            return torch.optim.SGD(params, lr=a.learning_rate, weight_decay=a.weight_decay)
        if a.optim == "adamw_8bit":  # m and v in 8 bits, blockwise (tensors under 4096 values keep 32-bit states)
            return AdamW8bit(params, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2), eps=a.adam_epsilon,
                             weight_decay=a.weight_decay)
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
        # region accumulate
        k = a.gradient_accumulation_steps
        host = [self.micro_batch(self.step * k + j, torch.device("cpu")) for j in range(k)]
        check_batch_ids(host, model, self.step + 1)  # on the host: no GPU wait, and before anything runs
        n_items = sum(count_trained_tokens(b["labels"]) for b in host)  # counted on the host: no GPU wait
        n_items = distributed.all_reduce_sum(n_items, self.dist, self.device)  # the GLOBAL count, before any forward
        if n_items == 0:
            raise TrainingError(f"step {self.step + 1}: every label of the batch is masked (-100); check the "
                                "response marker and max_seq_length")
        n_tokens = sum(real_tokens(b) for b in host)  # tokens of examples, padding left out
        n_tokens = distributed.all_reduce_sum(n_tokens, self.dist, self.device)
        batches = [self._to_device(b, self.device) for b in host]
        # The loss stays on the device while the micro-batches run: reading it (.item(), or `if not finite`) would
        # make the host wait for the GPU after every forward. One read per step, before the optimizer touches
        # anything, fetches the loss and the gradient norm together and guards against NaN.
        loss_total, W = None, self.dist.world_size
        for j, b in enumerate(batches):
            # DDP: all-reduce only after the last micro-batch's backward (the gradients add up locally first)
            sync = self.engine.no_sync() if self.dist.parallel == "ddp" and j < k - 1 else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    # return_logits=False: only the loss is needed, so the head's logits are never held at once (a
                    # fused, chunked loss on a GPU; on a CPU only the positions that carry a label get logits)
                    out = self.engine(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
                                      position_ids=b.get("position_ids"), segment_ids=b.get("segment_ids"),
                                      num_items_in_batch=n_items,
                                      return_logits=False)
                self.scaler.scale(out.loss * W if W > 1 else out.loss).backward()  # × W: see the module docstring
            loss = out.loss.detach().float()
            loss_total = loss if loss_total is None else loss_total + loss
        if self.dist.enabled:  # the step's loss over all ranks (the same on every rank: they stop together on NaN)
            torch.distributed.all_reduce(loss_total)
        # endregion
        self.scaler.unscale_(self.optimizer)
        params = list(self.params.values())
        if a.max_grad_norm and a.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        grad_norm = distributed.full_tensor(grad_norm)  # FSDP: the norm of the sharded gradients, made whole
        loss_value, grad_norm = torch.stack([loss_total, grad_norm.float()]).tolist()  # the step's one sync
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            broken = broken_frozen_weight(model)  # a broken base, not the learning rate (a pass only on failure)
            if broken:
                raise TrainingError(f"the loss became {loss_value} at step {self.step + 1}: {broken}. Nothing of "
                                    "this step was saved.")
            raise TrainingError(f"the loss became {loss_value} at step {self.step + 1}: training diverged. "
                                "Lower learning_rate, keep max_grad_norm on, or use fp32/bf16 instead of fp16. "
                                "Nothing of this step was saved.")
        lr = a.learning_rate * lr_multiplier(self.step, a.max_steps, a.warmup_steps, a.lr_scheduler_type)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"the gradient norm became {grad_norm} at step {self.step + 1}: lower "
                                "learning_rate or use fp32. Nothing of this step was saved.")
        self.scaler.step(self.optimizer)  # with fp16 loss scaling, a step with inf gradients is skipped
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
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
        bs, W = self.args.per_device_eval_batch_size, self.dist.world_size
        # each rank scores its slice; all ranks run the same number of forwards (FSDP's all-gathers pair up),
        # a rank whose slice ran out scores a stand-in batch and ignores it
        lo, hi = distributed.rank_slice(len(dataset), self.dist.rank, W)
        mine = dataset[lo:hi]
        for i in range(0, -(-len(dataset) // W), bs):
            part = mine[i:i + bs]
            b = {k: v.to(self.device) for k, v in collate(part or dataset[:1], self.pad_token_id).items()}
            with self._autocast():
                out = self.model(b["input_ids"], b["labels"], attention_mask=b.get("attention_mask"),
                                 num_items_in_batch=1)  # returns the sum over tokens
            if part:
                total, count = total + out.loss.item(), count + count_trained_tokens(b["labels"])
        total = distributed.all_reduce_sum(total, self.dist, self.device)
        count = distributed.all_reduce_sum(count, self.dist, self.device)
        self.model.train(was_training)
        return {"eval_loss": total / max(count, 1), "eval_tokens": count}

    # --- the loop -------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None, stop_after: int | None = None) -> dict:
        """Run until ``max_steps`` (or ``stop_after`` steps, to simulate an interruption). Returns a summary;
        its ``steps_trained`` is 0 when a resumed run had already reached ``max_steps`` (a warning says so).

        A used ``output_dir`` is refused unless resuming or ``args.overwrite_output_dir`` (see `runs`)."""
        from tqdm import tqdm  # the text bar everywhere (tqdm.auto warns in a notebook without ipywidgets)
        a = self.args
        runs.check_output_dir(a.output_dir, resuming=resume_from_checkpoint or False, overwrite=a.overwrite_output_dir)
        if a.overwrite_output_dir and not resume_from_checkpoint and self.dist.is_main:
            runs.clear_run(a.output_dir)
        distributed.barrier(self.dist)  # every rank has checked the directory before rank 0 writes into it
        os.makedirs(a.output_dir, exist_ok=True)
        if resume_from_checkpoint:
            self.load_checkpoint(resume_from_checkpoint)
        else:
            torch.manual_seed(a.seed)
        first_step = self.step
        if resume_from_checkpoint and first_step >= a.max_steps:
            import warnings
            warnings.warn(f"nothing to train: the checkpoint {self.resumed_from} is at step {first_step} and "
                          f"max_steps is {a.max_steps} (that run is finished). Raise max_steps to train on, or start "
                          "a new run", stacklevel=2)
        self._rewrite_csv()
        end = a.max_steps if stop_after is None else min(a.max_steps, stop_after)
        bar = tqdm(total=a.max_steps, initial=self.step, disable=not (a.progress_bar and self.dist.is_main),
                   desc="training", unit="step")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_time = time.perf_counter()
        below, stopped_early = 0, False  # steps in a row with the loss under stop_at_loss
        while self.step < end and not stopped_early:
            t0 = time.perf_counter()
            record = self.training_step()
            seconds = time.perf_counter() - t0
            record.update(seconds=round(seconds, 4), tokens_per_s=round(record["tokens"] / seconds, 1),
                          peak_mem_gib=round(peak_memory_gib(self.device), 4))
            if a.eval_steps and self.step % a.eval_steps == 0 and self.eval_dataset:
                record.update(self.evaluate())
            below = below + 1 if a.stop_at_loss is not None and record["loss"] < a.stop_at_loss else 0
            stopped_early = below >= a.stop_patience and self.step < a.max_steps
            if self.step % a.logging_steps == 0 or self.step == a.max_steps or stopped_early:
                self.log_history.append(record)
                self._append_csv(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if a.save_steps and self.step % a.save_steps == 0:
                self.save_checkpoint()
        bar.close()
        if stopped_early and self.dist.is_main:
            print(f"stopped early at step {self.step} of {a.max_steps}: the loss stayed below {a.stop_at_loss} for "
                  f"{a.stop_patience} steps in a row (the task is learned; --stop_at_loss none runs every step)")
        runtime = time.perf_counter() - start_time
        self._write_json_log()
        losses = [r["loss"] for r in self.log_history]
        return {"global_step": self.step, "steps_trained": self.step - first_step, "train_runtime": runtime,
                "stopped_early": stopped_early,
                "train_loss": sum(losses) / len(losses) if losses else float("nan"), "log_history": self.log_history}

    # --- logs -----------------------------------------------------------------------------------------------
    CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "trained_tokens", "tokens", "seconds", "tokens_per_s",
                  "peak_mem_gib", "eval_loss")

    def _csv_path(self):
        return os.path.join(self.args.output_dir, "train_log.csv")

    def _rewrite_csv(self):
        if not self.dist.is_main:
            return

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.CSV_FIELDS, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.log_history)
        write_file(self._csv_path(), write)

    def _append_csv(self, record):
        if not self.dist.is_main:
            return
        with open(self._csv_path(), "a", newline="") as f:
            csv.DictWriter(f, self.CSV_FIELDS, extrasaction="ignore").writerow(record)

    def _write_json_log(self):
        if not self.dist.is_main:
            return
        path = os.path.join(self.args.output_dir, "train_log.json")
        write_json(path, self.log_history, indent=1)

    # --- checkpoints (the format lives in checkpoints.py) -----------------------------------------------------
    def save_checkpoint(self, path: str | None = None) -> str:
        """Write ``output_dir/checkpoint-<step>``, swapped in whole."""
        return checkpoints.save_checkpoint(self, path or os.path.join(self.args.output_dir, f"checkpoint-{self.step}"))

    def load_checkpoint(self, path: str) -> None:
        """Restore from ``path`` ("latest": the newest readable checkpoint of output_dir)."""
        self.resumed_from = checkpoints.load_checkpoint(self, path)

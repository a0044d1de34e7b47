"""One fine-tuning run, owned in one place: `FineTuneConfig` says what to do, `finetune(config)` does it.

    load (4-bit) → add LoRA → build the data (prompt tokens masked) → train → held-out score → save → summary

all inside one `distributed.session()` (torchrun's process group joined on the way in, left on the way out). The
`minilora train` command, the lessons and the benchmarks call this; the command adds only flags and their checks.

    from minilora.finetune import FineTuneConfig, finetune
    result = finetune(FineTuneConfig(max_steps=10))          # the bundled SmolLM2 on the bundled dates task
    result.summary["exact_match_after"]

The fields carry unsloth-cli.py's names and `minilora train`'s defaults. Every value is checked once, when the config
is made (the training values by `TrainingArguments`, which the config builds), so a bad value is refused before
anything loads. Paths are checked and claimed before loading too: a run owns its ``output_dir``
(`minilora.train.runs`), and a save target is checked (not the loaded model, empty unless overwriting, writable, room
for the estimated size) before training starts; if the final save still fails, the trained adapter is kept in the run
directory and the error says where.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

from .models.checkpointing import check_setting
from .save import GGUF_TYPES, SAVE_METHODS
from .train.arguments import TrainingArguments, mixed_precision_for
from .train.runs import RunSetupError, check_paths, claim_paths, resolve_paths

# bytes per base parameter a save writes (the merged formats) — for the free-space check before training
_BYTES_PER_PARAM = {"merged_16bit": 2.0, "merged_4bit": 0.6, "f16": 2.0, "q8_0": 34 / 32, "f32": 4.0}


@dataclass
class FineTuneConfig:
    # model
    model_name: str = "smollm2"
    max_seq_length: int = 128
    dtype: str | None = None  # None: bfloat16 on a recent GPU, else float32; or float32 / bfloat16 / float16
    load_in_4bit: bool = True
    # data: "dates" (the bundled task), a file, a datasets.Dataset, or a list of dicts / Examples
    dataset: object = "dates"
    dataset_text_field: str | None = None  # a raw text column to train on whole (instead of instruction/chat columns)
    raw_text_file: str | None = None
    chunk_size: int | None = None  # raw text: tokens per window (default max_seq_length)
    stride: int | None = None  # raw text: a new window every `stride` tokens (default 3/4 of chunk_size)
    eval_examples: int = 60  # held-out exact match, dates task only
    # LoRA
    r: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    bias: str = "none"
    use_gradient_checkpointing: bool | str = False  # False, True/"recompute", "offload" ("unsloth") or "auto"
    memory_budget: object = None  # with "auto": GiB (20) or a share of the available memory ("90%"); None: all but 10%
    random_state: int = 3407
    use_rslora: bool = False
    # training
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 5
    max_steps: int = 40
    learning_rate: float = 1e-3
    optim: str = "adamw_torch"
    weight_decay: float = 0.01
    lr_scheduler_type: str = "linear"
    seed: int = 3407
    packing: bool = False
    global_train_batch_size: int | None = None
    parallel: str | None = None
    stop_at_loss: float | None = None
    save_steps: int = 0
    resume_from_checkpoint: str | None = None
    logging_steps: int = 1
    progress: bool = True
    # saving
    output_dir: str | None = None  # None: a new outputs/run-<date>-<time>
    overwrite_output_dir: bool = False
    save_model: bool = False
    save_method: str = "merged_16bit"
    save_gguf: bool = False
    save_path: str | None = None  # None: <output_dir>/model
    quantization: tuple = ("q8_0",)

    def __post_init__(self):
        from .dtypes import dtype_name, parse_dtype
        if self.dtype is not None:
            self.dtype = dtype_name(parse_dtype(self.dtype))  # one spelling from here on: "bfloat16"
        # "unsloth" → "offload"; "auto" is planned per layer by the loader (memory.plan)
        self.use_gradient_checkpointing = check_setting(self.use_gradient_checkpointing, self.memory_budget)
        from .memory.plan import parse_memory_budget
        parse_memory_budget(self.memory_budget)
        from .lora import check_lora_args
        check_lora_args(self.r, self.lora_alpha, self.lora_dropout, self.bias)
        if isinstance(self.max_seq_length, bool) or not isinstance(self.max_seq_length, int) \
                or self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be a positive integer, got {self.max_seq_length!r}")
        if self.save_method not in SAVE_METHODS:
            raise ValueError(f"save_method={self.save_method!r}: choose one of {', '.join(SAVE_METHODS)}")
        self.quantization = tuple([self.quantization] if isinstance(self.quantization, str) else self.quantization)
        bad = [q for q in self.quantization if q not in GGUF_TYPES]
        if bad or not self.quantization:
            raise ValueError(f"quantization={bad or list(self.quantization)!r}: choose from {', '.join(GGUF_TYPES)}")
        if self.dataset_text_field is not None and not isinstance(self.dataset_text_field, str):
            raise ValueError(f"dataset_text_field must be a column name, got {self.dataset_text_field!r}")
        if self.raw_text_file is not None:
            self.chunk_size = self.max_seq_length if self.chunk_size is None else self.chunk_size
            if not isinstance(self.chunk_size, int) or self.chunk_size < 2:
                raise ValueError(f"chunk_size must be an integer >= 2, got {self.chunk_size!r}")
            if self.chunk_size > self.max_seq_length:
                raise ValueError(f"chunk_size {self.chunk_size} is longer than max_seq_length {self.max_seq_length} "
                                 "— lower chunk_size or raise max_seq_length")
            self.stride = max(1, self.chunk_size * 3 // 4) if self.stride is None else self.stride
            if not isinstance(self.stride, int) or self.stride < 1:
                raise ValueError(f"stride must be a positive integer, got {self.stride!r}")
            if self.stride > self.chunk_size:
                raise ValueError(f"stride {self.stride} is larger than chunk_size {self.chunk_size}: the tokens "
                                 "between windows would never be trained on — use a stride <= chunk_size")
        self.training_arguments(None)  # the training values are checked now, by the class that uses them

    def training_arguments(self, mixed_precision: str | None) -> TrainingArguments:
        return TrainingArguments(
            output_dir=self.output_dir or "outputs", per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, max_steps=self.max_steps,
            learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
            lr_scheduler_type=self.lr_scheduler_type, weight_decay=self.weight_decay, optim=self.optim,
            seed=self.seed, logging_steps=self.logging_steps, save_steps=self.save_steps, packing=self.packing,
            max_seq_length=self.max_seq_length, parallel=self.parallel,
            global_train_batch_size=self.global_train_batch_size, overwrite_output_dir=self.overwrite_output_dir,
            mixed_precision=mixed_precision, progress_bar=self.progress, stop_at_loss=self.stop_at_loss)


@dataclass
class FineTuneResult:
    summary: dict  # what summary.json holds: steps, losses, tokens/s, exact match before/after, seconds
    output_dir: str
    save_path: str | None
    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    trainer: object = field(repr=False)


def finetune(config: FineTuneConfig, *, model=None, tokenizer=None, on_trainer=None, say=print) -> FineTuneResult:
    """Run the whole fine-tune ``config`` describes (see the module docstring).

    ``model``/``tokenizer``: an already built model to use instead of loading ``config.model_name`` (it gets LoRA
    unless it has adapters already). ``on_trainer(trainer)`` is called before training starts (hooks for tests and
    benchmarks). ``say``: where progress lines go (rank 0 only)."""
    from .loader import FastLanguageModel
    from .train import TrainingError, distributed
    t_start = time.perf_counter()
    newest = config.output_dir is None and config.resume_from_checkpoint == "latest"
    resolve_paths(config)
    check_paths(config)
    with distributed.session(config.parallel) as ctx:
        _refuse_sharded_merge(config, ctx)
        claim_paths(config, ctx.is_main, share=lambda name: distributed.text_from_main(name, ctx))
        say = say if ctx.is_main else quiet
        say(f"resuming the newest run with a checkpoint: {config.output_dir}" if newest else
            f"this run's directory: {config.output_dir}")
        if model is None:
            say(f"loading {config.model_name} (load_in_4bit={config.load_in_4bit}) ...", flush=True)
            model, tokenizer = FastLanguageModel.from_pretrained(
                config.model_name, max_seq_length=config.max_seq_length, dtype=config.dtype,
                load_in_4bit=config.load_in_4bit)
        examples, held_out = build_data(config, tokenizer, progress=config.progress and ctx.is_main)
        n_tokens = sum(len(e) for e in examples)
        say(f"data: {len(examples)} training examples, {n_tokens} tokens (longest {max(len(e) for e in examples)})")

        before = None
        if held_out and ctx.is_main:
            from .train import dates_task
            before, answers = dates_task.exact_match(model, tokenizer, held_out)
            show_scores(say, "before fine-tuning", before, held_out, answers)

        if not getattr(model, "peft_config", None):
            model = FastLanguageModel.get_peft_model(
                model, r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias=config.bias,
                use_gradient_checkpointing=config.use_gradient_checkpointing, random_state=config.random_state,
                use_rslora=config.use_rslora, verbose=ctx.is_main, memory_budget=config.memory_budget,
                optim=config.optim)
        planner = getattr(model, "gradient_checkpointing", None)
        if hasattr(planner, "prepare"):  # "auto": plan for the largest batch now, refusing a budget that cannot fit
            planner.prepare(config.per_device_train_batch_size, config.max_seq_length)
        if ctx.is_main:
            check_save_room(config, model)
        # the dtype is known now: it decides the autocast (fp16 weights need loss scaling)
        targs = config.training_arguments(mixed_precision_for(compute_dtype(model)))
        pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else \
            getattr(tokenizer, "eos_token_id", None) or 0
        from .train import Trainer
        trainer = Trainer(model, targs, examples, pad_token_id=pad, dist=ctx)
        if on_trainer is not None:
            on_trainer(trainer)
        result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        if result["steps_trained"] == 0:
            raise TrainingError(f"nothing was trained: {trainer.resumed_from} is already at step "
                                f"{result['global_step']} = max_steps (that run is finished). Pass a larger max_steps "
                                "to train on, or leave out resume_from_checkpoint to start a new run")
        summary = summarize(result)
        say(f"trained {summary['steps']} steps in {summary['train_seconds']:.1f} s ({summary['tokens_per_s']:.0f} "
            f"tokens/s); loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; "
            f"log in {config.output_dir}/train_log.csv")

        if held_out and (ctx.is_main or ctx.parallel == "fsdp"):
            with distributed.unsharded(model):  # FSDP: every rank gathers the whole model, rank 0 generates with it
                if ctx.is_main:
                    from .train import dates_task
                    after, answers = dates_task.exact_match(model, tokenizer, held_out)
                    show_scores(say, "after fine-tuning", after, held_out, answers)
                    summary.update(exact_match_before=before, exact_match_after=after, held_out=len(held_out))

        saved = None
        if config.save_model or config.save_gguf:
            adapter = None
            if ctx.parallel == "fsdp":  # gathered by every rank together, written by rank 0
                from .io.adapters import adapter_state_dict
                adapter = adapter_state_dict(model)
            if ctx.is_main:
                saved = save_or_keep(config, model, tokenizer, adapter, say)
        if ctx.is_main:
            from .io.atomic import write_json
            summary["total_seconds"] = round(time.perf_counter() - t_start, 2)
            write_json(os.path.join(config.output_dir, "summary.json"), summary)
            say(f"done in {summary['total_seconds']:.0f} s")
    return FineTuneResult(summary, config.output_dir, saved, model, tokenizer, trainer)


def quiet(*_args, **_kwargs) -> None:
    """A `say` that prints nothing: what ranks other than 0 (and scripted runs) pass."""


def _refuse_sharded_merge(config: FineTuneConfig, ctx) -> None:
    if ctx.enabled and ctx.parallel == "fsdp" and (config.save_gguf or (config.save_model
                                                                        and config.save_method != "lora")):
        raise RunSetupError("save_method", "parallel='fsdp' saves the adapter only (save_method 'lora'): the merge "
                            "needs the whole base, which no single rank holds. Merge afterwards in one process: "
                            "FastLanguageModel.from_pretrained(<adapter dir>), then save_pretrained_merged")


def compute_dtype(model):
    """The dtype the model computes in: its floating-point weights' (a 4-bit layer's compute dtype included)."""
    import torch
    for p in model.parameters():
        if p.is_floating_point() and not p.requires_grad:
            return p.dtype
    return torch.float32


def build_data(config: FineTuneConfig, tokenizer, progress: bool = True):
    """(training examples, held-out records for exact match or None)."""
    from .train import Example, build_examples, chunk_text, dates_task
    from .train.data import load_examples
    if config.raw_text_file:
        from .io.records import read_text_file
        return chunk_text(tokenizer, read_text_file(config.raw_text_file), config.chunk_size, config.stride), None
    data = config.dataset
    if isinstance(data, str) and data == "dates":
        train, held = dates_task.make_splits(n_train=480, n_eval=max(config.eval_examples, 1), seed=0)
        return build_examples(train, tokenizer, config.max_seq_length), held[:config.eval_examples]
    if isinstance(data, (list, tuple)) and data and all(isinstance(e, Example) for e in data):
        return list(data), None  # already tokenized
    if tokenizer is None:
        raise ValueError(f"{config.model_name} has no tokenizer files; training on records needs tokenizer.json")
    # tokenized once per data + tokenizer: a resumed run (same directory) reads them back instead of tokenizing
    cache = os.path.join(config.output_dir, "examples-cache") if config.output_dir else None
    return load_examples(data, tokenizer, config.max_seq_length, text_field=config.dataset_text_field,
                         cache_dir=cache, progress=progress), None


def show_scores(say, label: str, correct: int, records, answers, n_show: int = 3) -> None:
    say(f"{label}: {correct}/{len(records)} held-out dates exactly right ({100 * correct / len(records):.0f}%)")
    for r, a in list(zip(records, answers))[:n_show]:
        mark = "ok " if a == r["output"] else "   "
        say(f"   {mark} {r['input']!r:>22} -> {a!r}  (want {r['output']!r})")


def summarize(result: dict) -> dict:
    log = result["log_history"]
    speed = sum(r["tokens"] for r in log) / max(sum(r["seconds"] for r in log), 1e-9)
    return {"steps": result["global_step"], "train_seconds": round(result["train_runtime"], 2),
            "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "tokens_per_s": round(speed, 1)}


# --- saving: checked before training, and nothing trained is lost -------------------------------------------------
def estimated_save_bytes(config: FineTuneConfig, model) -> int:
    n_lora = model.num_parameters(trainable_only=True)
    n_base = model.num_parameters() - n_lora  # 4-bit weights counted as the weights they stand for
    total = 0
    if config.save_model:
        total += 4 * n_lora if config.save_method == "lora" else _BYTES_PER_PARAM[config.save_method] * n_base
    if config.save_gguf:
        total += sum(_BYTES_PER_PARAM[q] * n_base for q in config.quantization)
    return int(total)


def check_save_room(config: FineTuneConfig, model) -> None:
    """Before training: the save target's nearest existing folder is writable and has room for the save."""
    if not (config.save_model or config.save_gguf):
        return
    folder = os.path.abspath(config.save_path)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunSetupError("save_path", f"{config.save_path!r} cannot be written ({folder!r} is read-only) — "
                            "pick a writable save path; nothing was trained yet")
    need, free = estimated_save_bytes(config, model), shutil.disk_usage(folder).free
    if need > free:
        raise RunSetupError("save_path", f"{config.save_path!r}: the save needs about {need / 2**20:.0f} MiB and "
                            f"{folder!r} has {free / 2**20:.0f} MiB free — free some space or pick another save "
                            "path; nothing was trained yet")


def save_or_keep(config: FineTuneConfig, model, tokenizer, adapter, say) -> str:
    """Save as asked; if that fails, keep the trained adapter in the run directory and say where."""
    try:
        save(config, model, tokenizer, adapter, say)
        return config.save_path
    except Exception as e:
        from .save import save_pretrained_merged
        keep = os.path.join(config.output_dir, "adapter-unsaved")
        try:
            save_pretrained_merged(model, tokenizer, keep, "lora", adapter_tensors=adapter, overwrite=True)
        except Exception:  # the run directory failed too: report the first error, nothing more to keep
            raise e from None
        raise RuntimeError(f"saving to {config.save_path!r} failed ({e}); the trained adapter is kept in "
                           f"{keep!r} — load it with FastLanguageModel.from_pretrained({keep!r}) and save again") \
            from e


def save(config: FineTuneConfig, model, tokenizer, adapter, say) -> None:
    """The adapter records the loaded model's name_or_path as its base (the loader sets one PEFT and minilora
    both resolve: the bundled model's Hub id, an absolute path)."""
    from .save import save_gguf, save_pretrained_merged
    if config.save_model:
        save_pretrained_merged(model, tokenizer, config.save_path, config.save_method, adapter_tensors=adapter,
                               overwrite=config.overwrite_output_dir)
        say(f"saved ({config.save_method}) to {config.save_path}/")
    if config.save_gguf:
        for q in config.quantization:
            path = os.path.join(config.save_path, f"model-{q}.gguf")
            save_gguf(model, tokenizer, path, q, overwrite=config.overwrite_output_dir)
            say(f"saved GGUF ({q}) to {path}")

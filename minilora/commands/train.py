"""`minilora train`: one complete fine-tune, with the arguments of Unsloth's ``unsloth-cli.py``.

With no arguments it QLoRA-fine-tunes the bundled SmolLM2-135M-Instruct on the bundled dates task (rewrite
"March 5, 2021" as "2021-03-05") and prints held-out exact-match before and after. The steps, in order:
load (4-bit) → add LoRA → build the data (prompt tokens masked) → train → evaluate → save.

On N GPUs (or N CPU processes), start it with torchrun; every process runs this same command:
    torchrun --nproc_per_node N -m minilora train ... --parallel ddp     (a full model per GPU)
    torchrun --nproc_per_node N -m minilora train ... --parallel fsdp    (weights sharded: ~1/N per GPU)
    torchrun --nproc_per_node 2 -m minilora train --max_steps 5 --parallel fsdp   (a laptop: 2 CPU processes, gloo)
--per_device_train_batch_size stays per process, so the global batch is N times larger; pass
--global_train_batch_size to keep it fixed whatever N is (the run is then the one-process run, split).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

from .arguments import (
    UsageError,
    finite_float,
    given,
    int_at_least,
    non_negative_int,
    positive_int,
    refuse_unused,
    seed,
    track_given,
)

DEFAULTS = dict(model_name="smollm2", max_seq_length=128, dataset="dates", r=16, lora_alpha=32,
                per_device_train_batch_size=8, gradient_accumulation_steps=1, warmup_steps=5, max_steps=40,
                learning_rate=1e-3, lr_scheduler_type="linear", use_gradient_checkpointing="false")

HUB_ARGUMENTS = ("push_model", "push_gguf", "hub_path", "hub_token")


def _bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _dtype(text: str):
    """None (automatic) or the canonical name ("bfloat16") of a float dtype."""
    if str(text).lower() in ("none", "auto", ""):
        return None
    from ..dtypes import dtype_name, parse_dtype  # imported here: `minilora --help` doesn't wait for torch
    try:
        return dtype_name(parse_dtype(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"dtype {text!r}: choose None (automatic), float32, bfloat16 or float16")


def _loss_or_none(text: str):
    low = str(text).lower()
    if low == "none":
        return low
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"stop_at_loss {text!r}: give a positive number or 'none'")
    return value


def _checkpointing(text: str):
    """Words people type → the setting `minilora.models.checkpointing.check_setting` knows (it resolves "unsloth")."""
    low = str(text).lower()
    words = {"true": True, "1": True, "yes": True, "false": False, "none": False, "0": False, "no": False,
             "off": False}
    from ..models.checkpointing import check_setting  # imported here: `minilora --help` doesn't wait for torch
    try:
        return check_setting(words.get(low, low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"use_gradient_checkpointing={text!r}: choose unsloth (= offload), true "
                                         "(= recompute), auto (a memory budget picks per layer) or false") from None


def _budget(text: str):
    from ..memory.plan import parse_memory_budget  # imported here: `minilora --help` doesn't wait for torch
    try:
        parse_memory_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="fine-tune a model with LoRA/QLoRA (no arguments: the bundled SmolLM2 on the bundled dates task)",
        description=__doc__ + "\nEvery argument below has the name it has in unsloth-cli.py, so the two read "
                              "side by side.",
        epilog="Example: minilora train --max_steps 10 --save_model --save_method lora --save_path my-adapter\n"
               "Not available offline (accepted so scripts written for unsloth-cli.py parse, but refused if "
               "used): --push_model, --push_gguf, --hub_path, --hub_token — minilora never uploads anything; "
               "copy the saved directory yourself.")
    track_given(p)  # explicit options are recorded, so check_args can refuse those that would do nothing
    d = DEFAULTS
    g = p.add_argument_group("model")
    g.add_argument("--model_name", default=d["model_name"],
                   help="what to fine-tune: 'smollm2' (the bundled SmolLM2-135M-Instruct, no download), a .gguf "
                        "file, or a Hugging Face directory with config.json + safetensors (default %(default)s)")
    g.add_argument("--max_seq_length", type=positive_int, default=d["max_seq_length"],
                   help="longest example in tokens; longer ones are cut. Longer sequences cost memory and "
                        "time in every layer, so keep it just above your data (dates: ~80 tokens) (default %(default)s)")
    g.add_argument("--dtype", default=None, type=_dtype, metavar="{None,float32,bfloat16,float16}",
                   help="the dtype of the frozen weights and of the compute: float32 on a CPU, bfloat16 on a "
                        "recent GPU; default picks for you. float16 turns on loss scaling (its range is small)")
    g.add_argument("--load_in_4bit", type=_bool, default=True, nargs="?", const=True,
                   help="QLoRA: store the frozen linear weights in 4-bit NF4 (about 1/4 of 16-bit memory); each "
                        "step dequantizes them on the fly, which costs time on a CPU. Pass "
                        "'--load_in_4bit false' for plain LoRA (default true)")
    g.add_argument("--dataset", default=d["dataset"],
                   help="'dates' (the bundled task), or your data: a .json/.jsonl, .parquet, .csv/.tsv file, a folder "
                        "of Parquet shards, or a folder written by datasets' save_to_disk (Parquet and save_to_disk "
                        "need `pip install minilora[data]`). Records are Alpaca (instruction, input, output), chat "
                        "('messages': [{role, content}]), ShareGPT ('conversations': [{from, value}]) or pre-tokenized "
                        "(input_ids, labels). Hub names need a download: save the data to a file first "
                        "(default %(default)s)")
    g.add_argument("--dataset_text_field", default=None,
                   help="train on a raw text column of --dataset (every token is a target), e.g. 'text'; "
                        "without it the columns say the format (default: none)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--r", type=positive_int, default=d["r"],
                   help="rank of the update BA: trainable numbers per layer are r*(in+out). 8-64 is usual; a "
                        "small task needs little (default %(default)s)")
    g.add_argument("--lora_alpha", default=d["lora_alpha"],
                   type=finite_float(0, low_inclusive=False, why="alpha/r scales the update: 0 would train nothing"),
                   help="the update is scaled by alpha/r (alpha/sqrt(r) with --use_rslora): a larger alpha makes "
                        "the same weights move the output more (default %(default)s)")
    g.add_argument("--lora_dropout", type=finite_float(0, low_inclusive=True, high=1, high_inclusive=False),
                   default=0.0,
                   help="dropout on the LoRA input during training; 0 is fastest and usually fine (default 0)")
    g.add_argument("--bias", default="none", choices=["none"],
                   help="train biases too? minilora trains LoRA weights only (Unsloth's recommended 'none')")
    g.add_argument("--use_gradient_checkpointing", type=_checkpointing, default=d["use_gradient_checkpointing"],
                   help="keep only each layer's input and recompute the rest in backward: 'true' (recompute), "
                        "'unsloth' (also move those inputs to CPU memory, Unsloth's default), 'auto' (per layer the "
                        "fastest of keep / recompute / offload whose predicted peak fits --memory_budget) or 'false' "
                        "(keep everything: fastest, most memory; the default here, where sequences are short)")
    g.add_argument("--memory_budget", default=None, type=_budget,
                   help="with --use_gradient_checkpointing auto: GiB (e.g. 20) or a share of the memory available "
                        "('90%%'); default: what is available minus 10%% (at least 1 GiB)")
    g.add_argument("--random_state", type=seed, default=3407,
                   help="seed for the LoRA A initialization (default %(default)s)")
    g.add_argument("--use_rslora", type=_bool, default=False, nargs="?", const=True,
                   help="rank-stabilized LoRA: scale by alpha/sqrt(r) so larger ranks keep learning (default off)")
    g.add_argument("--loftq_config", default=None, help="LoftQ initialization: not supported, leave unset")
    g = p.add_argument_group("training")
    g.add_argument("--per_device_train_batch_size", type=positive_int, default=d["per_device_train_batch_size"],
                   help="examples per forward/backward pass (default %(default)s)")
    g.add_argument("--gradient_accumulation_steps", type=positive_int, default=d["gradient_accumulation_steps"],
                   help="micro-batches per optimizer step: the effective batch is batch_size x this; the loss is "
                        "normalized over all trained tokens of the step (default %(default)s)")
    g.add_argument("--warmup_steps", type=non_negative_int, default=d["warmup_steps"],
                   help="steps over which the learning rate ramps up from ~0 (default %(default)s)")
    g.add_argument("--max_steps", type=positive_int, default=d["max_steps"],
                   help="optimizer steps to run (default %(default)s)")
    g.add_argument("--stop_at_loss", type=_loss_or_none, default="none",
                   help="stop before max_steps once the training loss stayed below this for 3 steps in a row. A "
                        "batch's loss is noisy, so a few low batches do not mean the held-out answers are right: "
                        "it is off by default; 'none': always run max_steps (default %(default)s)")
    g.add_argument("--learning_rate", type=finite_float(0, low_inclusive=False), default=d["learning_rate"],
                   help="peak learning rate of AdamW. LoRA tolerates larger rates than full fine-tuning; "
                        "unsloth-cli's default is 2e-4 for long runs (default %(default)s)")
    g.add_argument("--optim", default="adamw_torch", choices=["adamw_torch", "adamw", "adamw_8bit", "sgd"],
                   help="optimizer. adamw_8bit (unsloth-cli's default) keeps AdamW's two moments in 8 bits, "
                        "blockwise (minilora.train.AdamW8bit, runs on a CPU too; tensors under 4096 values keep "
                        "32-bit states); with LoRA the optimizer state is small either way (default %(default)s)")
    g.add_argument("--weight_decay", type=finite_float(0, low_inclusive=True), default=0.01,
                   help="AdamW's decoupled weight decay: pulls weights toward 0 each step (default %(default)s)")
    g.add_argument("--lr_scheduler_type", default=d["lr_scheduler_type"], choices=["linear", "cosine", "constant"],
                   help="how the learning rate falls after warm-up (default %(default)s)")
    g.add_argument("--seed", type=seed, default=3407,
                   help="seed for data order and dropout: the same seed gives the same run (default %(default)s)")
    g.add_argument("--packing", type=_bool, default=False, nargs="?", const=True,
                   help="put several examples in each row of max_seq_length (best fit); each example attends only "
                        "within itself, positions restart and no label crosses a boundary: the same loss and "
                        "gradients as unpacked, without padding. A micro-batch is then per_device_train_batch_size "
                        "full rows, not that many examples (default off)")
    g.add_argument("--global_train_batch_size", type=positive_int, default=None,
                   help="examples per micro-batch summed over all processes (default: the per-device size x the "
                        "number of processes); each process takes its contiguous slice")
    g.add_argument("--parallel", default=None, choices=["ddp", "fsdp"],
                   help="with several processes (torchrun): ddp keeps a full model per process and averages the "
                        "LoRA gradients; fsdp shards every weight, the 4-bit base included, across processes "
                        "(default ddp when started by torchrun with N > 1; one process ignores it)")
    g.add_argument("--save_steps", type=non_negative_int, default=0,
                   help="write a resumable checkpoint to output_dir every N steps (0: never) (default 0)")
    g.add_argument("--resume_from_checkpoint", default=None,
                   help="a checkpoint-N directory, or 'latest': the newest readable checkpoint of --output_dir "
                        "(without --output_dir: of the newest run under outputs/), to continue from exactly. The "
                        "checkpoint must come from the same model, data and settings (--max_steps may grow)")
    g = p.add_argument_group("raw text (instead of --dataset)")
    g.add_argument("--raw_text_file", default=None,
                   help="train on a plain text file: every token is a target (continued pre-training)")
    g.add_argument("--chunk_size", type=int_at_least(2), default=None,
                   help="tokens per training window, at most max_seq_length (default: max_seq_length)")
    g.add_argument("--stride", type=positive_int, default=None,
                   help="a new window starts every `stride` tokens; windows overlap by chunk_size - stride "
                        "(default: 3/4 of chunk_size, so windows overlap by a quarter, the proportion of "
                        "unsloth-cli's 2048/512)")
    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--logging_steps", type=positive_int, default=1,
                   help="log loss, learning rate, tokens/s and peak memory every N steps to "
                        "output_dir/train_log.csv and .json (default %(default)s)")
    g.add_argument("--report_to", default="none", choices=["none"],
                   help="external trackers (tensorboard, wandb, ...) are not used: logs are CSV/JSON files")
    g.add_argument("--eval_examples", type=non_negative_int, default=60,
                   help="held-out examples for exact-match before and after (dates task; 0 skips) "
                        "(default %(default)s)")
    g.add_argument("--no_progress", action="store_true", help="no progress bar (for logs and CI)")
    g = p.add_argument_group("saving")
    g.add_argument("--output_dir", default=None,
                   help="logs and checkpoints go here; one directory per run: a directory holding another run is "
                        "refused (unless resuming it or --overwrite_output_dir) (default: a new "
                        "outputs/run-<date>-<time> for every run)")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="delete the earlier run's logs and checkpoints in --output_dir, and replace a non-empty "
                        "--save_path as a whole (default off: both are refused)")
    g.add_argument("--save_model", type=_bool, default=False, nargs="?", const=True,
                   help="save the result to --save_path after training (default off)")
    g.add_argument("--save_method", default="merged_16bit", choices=["lora", "merged_16bit", "merged_4bit"],
                   help="lora: the adapter alone in PEFT's format (MBs); merged_16bit: W + (alpha/r)BA as "
                        "16-bit safetensors that transformers opens; merged_4bit: the merge stored as NF4 in the "
                        "transformers + bitsandbytes 4-bit format (loses accuracy: see lessons/week5_saving.py) "
                        "(default %(default)s)")
    g.add_argument("--save_gguf", type=_bool, default=False, nargs="?", const=True,
                   help="also write a GGUF file for llama.cpp tools into --save_path (default off)")
    g.add_argument("--save_path", default=None,
                   help="directory for the saved model; never the model's own directory; a non-empty one needs "
                        "--overwrite_output_dir (default: output_dir/model)")
    g.add_argument("--quantization", default=["q8_0"], nargs="+", choices=["f16", "q8_0", "f32"],
                   help="GGUF tensor types, one file each: f16, q8_0 (8-bit blocks of 32) or f32 "
                        "(default q8_0)")
    g = p.add_argument_group("hub (not available offline)")
    g.add_argument("--push_model", action="store_true", help="not available: minilora works offline")
    g.add_argument("--push_gguf", action="store_true", help="not available: minilora works offline")
    g.add_argument("--hub_path", default=None, help="not available: minilora works offline")
    g.add_argument("--hub_token", default=None, help="not available: minilora works offline")
    p.set_defaults(run=run)
    return p


def check_args(args) -> None:
    """Everything that can be checked from the command line alone, before a model is loaded (UsageError, exit 2).
    Single values were range-checked by their argparse types; here: combinations, and options that would do
    nothing in this run."""
    for name in HUB_ARGUMENTS:
        if getattr(args, name):
            raise UsageError(f"--{name}: uploading to the Hugging Face hub is not available in minilora (it works "
                             f"offline) — save with --save_model and copy {args.save_path!r} yourself")
    if args.loftq_config:
        raise UsageError("--loftq_config: LoftQ initialization is not supported — leave it unset")
    check_model_name(args.model_name)
    for path, what in ((args.output_dir, "output_dir"), (args.save_path, "save_path")):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--{what} {path!r} is an existing file — pass a directory path (created if missing)")
    if args.raw_text_file:
        if given(args, "dataset"):
            raise UsageError("--raw_text_file and --dataset both name the training data — pass one of them")
        if not os.path.isfile(args.raw_text_file):
            raise UsageError(f"--raw_text_file {args.raw_text_file!r} does not exist — pass a plain text file")
    else:
        refuse_unused(args, ["chunk_size", "stride"], "without --raw_text_file", "drop {it} or add --raw_text_file")
    if args.raw_text_file or args.dataset == "dates":
        refuse_unused(args, ["dataset_text_field"], "without a --dataset file", "drop {it} or pass --dataset FILE")
    if args.raw_text_file or args.dataset != "dates":
        refuse_unused(args, ["eval_examples"], "outside the bundled dates task",
                      "drop {it} (held-out exact match is measured on the dates task only)")
    if not args.save_model:
        refuse_unused(args, ["save_method"], "without --save_model", "add --save_model or drop {it}")
    if not args.save_gguf:
        refuse_unused(args, ["quantization"], "without --save_gguf", "add --save_gguf or drop {it}")
    if not (args.save_model or args.save_gguf):
        refuse_unused(args, ["save_path"], "without --save_model or --save_gguf", "add one of them or drop {it}")


def check_model_name(name: str) -> None:
    """A model name that is neither a path nor a bundled name is refused before anything loads."""
    from ..loader import SMOLLM2_NAMES, unknown_model_name
    if not os.path.exists(name) and str(name).lower() not in SMOLLM2_NAMES:
        try:
            unknown_model_name(str(name))
        except (ValueError, OSError) as e:
            raise UsageError(f"--model_name: {e}") from None


def config_from(args):
    """The `FineTuneConfig` these flags describe (its checks, worded with --flags)."""
    from ..finetune import FineTuneConfig
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FineTuneConfig) if hasattr(args, f.name)}
    values["stop_at_loss"] = None if args.stop_at_loss == "none" else args.stop_at_loss
    values["progress"] = not args.no_progress
    try:
        return FineTuneConfig(**values)
    except ValueError as e:
        raise UsageError(as_flags(str(e), values)) from None


def as_flags(message: str, names) -> str:
    """A message that names settings (``chunk_size``) worded for the command line (``--chunk_size``)."""
    pattern = r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")(?=[\s=:])"
    return re.sub(pattern, r"--\1", message)


def run(args) -> int:
    check_args(args)
    config = config_from(args)
    from ..finetune import finetune
    from ..train import DataError, TrainingError
    from ..train.runs import RunSetupError
    settings = [f.name for f in dataclasses.fields(config)]
    try:
        finetune(config)
    except RunSetupError as e:
        raise UsageError(f"--{e.option}: {as_flags(e.message, settings)}") from None
    except DataError as e:
        raise SystemExit(f"dataset problem: {e}") from None
    except TrainingError as e:
        raise SystemExit(f"training stopped: {as_flags(str(e), settings)}") from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main
    sys.exit(main(["train", *sys.argv[1:]]))

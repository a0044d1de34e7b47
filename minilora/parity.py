"""The same small fine-tune in one process or in N: run it both ways and compare losses, gradients and adapters.

    python -m minilora.parity --out one.json                                   # one process
    torchrun --nproc_per_node 2 -m minilora.parity --parallel fsdp --out two.json   # two (gloo on a CPU)
    torchrun ... -m minilora.parity --parallel ddp --out a.json :: --parallel fsdp --out b.json   # both

A tiny random Llama (built from `ModelConfig`, seeded), LoRA on every block linear (optionally a 4-bit base), and
random examples whose prompt part is masked (so ranks see different numbers of label tokens). Rank 0 writes a JSON
file: the loss of every step, the gradients of the first step, the final adapter tensors, the bytes each rank holds.
Used by tests/test_distributed.py and lessons/week6_beyond_one_gpu.py.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch

from .train import distributed
from .train.arguments import PARALLEL


def tiny_config(layers: int = 2):
    from .models import ModelConfig
    return ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                       rope_theta=10000.0, tie_word_embeddings=True)


def tiny_examples(n: int, seed: int = 0, vocab: int = 96):
    """n random examples of 6..24 tokens whose first 2..length-2 tokens are a masked prompt."""
    from .train.data import IGNORE_INDEX, Example
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(6, 25, (1,), generator=g))
        prompt = int(torch.randint(2, length - 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def build(quantize: bool = False, checkpointing=False, layers: int = 2, r: int = 8):
    from .linear4bit import quantize_model
    from .lora import get_peft_model
    from .models import build_model
    from .models.registry import init_weights
    model = build_model(tiny_config(layers))
    init_weights(model, std=0.05, seed=0)
    if quantize:
        quantize_model(model)
    get_peft_model(model, r=r, lora_alpha=2 * r, random_state=0, verbose=False)
    with torch.no_grad():  # LoRA B starts at zero; start it elsewhere so the first step's gradients of A are not 0
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.gradient_checkpointing = checkpointing
    return model


def run(opts) -> dict | None:
    """One fine-tune through `minilora.finetune.finetune`, inside the caller's `distributed.session` (or its own)."""
    with distributed.session(opts.parallel) as ctx:
        return _run(opts, ctx)


def _run(opts, ctx) -> dict | None:
    from .finetune import FineTuneConfig, finetune, quiet
    config = FineTuneConfig(
        model_name="tiny-random-llama", dataset=tiny_examples(opts.examples), eval_examples=0,
        per_device_train_batch_size=1, global_train_batch_size=opts.global_batch,
        gradient_accumulation_steps=opts.accum, max_steps=opts.steps, learning_rate=opts.lr, optim=opts.optim,
        warmup_steps=0, lr_scheduler_type="constant", seed=7, save_steps=opts.save_steps, progress=False,
        parallel=opts.parallel, output_dir=opts.output_dir, resume_from_checkpoint=opts.resume)
    model = build(opts.quantize, opts.checkpointing, opts.layers)
    first_grads, held = {}, {}

    def hooks(trainer):
        def keep_first_grads(optimizer, *_):  # runs on every rank: gathering sharded gradients is a collective
            if not first_grads:
                held.update(distributed.local_shard_bytes(model))  # the gradients exist right now
                for n, p in trainer.params.items():
                    first_grads[n] = distributed.full_tensor(p.grad).detach().cpu().clone()
        trainer.optimizer.register_step_pre_hook(keep_first_grads)
        if opts.stop_after:
            train = trainer.train
            trainer.train = lambda **kw: train(**kw, stop_after=opts.stop_after)
        if opts.kill_after:
            save = trainer.save_checkpoint

            def save_then_die(path=None):  # a crash right after a checkpoint: the whole job goes down
                out = save(path)
                if trainer.step >= opts.kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                return out
            trainer.save_checkpoint = save_then_die

    trainer = finetune(config, model=model, on_trainer=hooks, say=quiet).trainer
    held["optimizer"] = distributed.local_shard_bytes(model, trainer.optimizer)["optimizer"]
    from .io.adapters import adapter_state_dict
    adapter = adapter_state_dict(model)
    from .train.data import count_trained_tokens
    mine = {"held": held, "tokens": [count_trained_tokens(trainer.micro_batch(i)["labels"])
                                     for i in range(opts.steps * opts.accum)]}  # this rank's label tokens
    every = [mine]
    if ctx.enabled:
        every = [None] * ctx.world_size
        torch.distributed.all_gather_object(every, mine)
    result = {"world_size": ctx.world_size, "parallel": ctx.parallel,
              "losses": [r["loss"] for r in trainer.log_history],
              "trained_tokens": [r["trained_tokens"] for r in trainer.log_history],
              "first_grads": {n: t.tolist() for n, t in first_grads.items()},
              "adapter": {n: t.tolist() for n, t in adapter.items()},
              "held_bytes": [r["held"] for r in every], "rank_tokens": [r["tokens"] for r in every],
              "step": trainer.step}
    if ctx.is_main and opts.out:
        with open(opts.out, "w") as f:
            json.dump(result, f)
    distributed.barrier(ctx)
    return result



def main(argv: list[str]) -> None:
    """Several runs in the same processes (one start-up and one process group paid once): their arguments
    separated by ``::``."""
    runs, current = [], []
    for word in argv + ["::"]:
        if word == "::":
            runs.append(current)
            current = []
        else:
            current.append(word)
    parsed = [parser().parse_args(words) for words in runs]
    with distributed.session(parsed[0].parallel):
        for opts in parsed:
            run(opts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minilora.parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parallel", choices=PARALLEL, default=None)
    p.add_argument("--quantize", action="store_true", help="a 4-bit (NF4) base: QLoRA")
    p.add_argument("--checkpointing", default=False, choices=[False, "recompute", "offload"],
                   type=lambda s: False if s in ("false", "none") else s)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--examples", type=int, default=13)
    p.add_argument("--global_batch", type=int, default=5, help="examples per micro-batch over all ranks")
    p.add_argument("--accum", type=int, default=2, help="micro-batches per step")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--optim", default="adamw_torch", choices=["adamw_torch", "sgd"])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--save_steps", type=int, default=0)
    p.add_argument("--stop_after", type=int, default=None)
    p.add_argument("--kill_after", type=int, default=0, help="SIGKILL rank 0 after the checkpoint of this step")
    p.add_argument("--resume", default=None, help="a checkpoint directory to resume from")
    p.add_argument("--output_dir", default="parity-out")
    p.add_argument("--out", default=None, help="JSON file rank 0 writes")
    return p


if __name__ == "__main__":
    main(sys.argv[1:])

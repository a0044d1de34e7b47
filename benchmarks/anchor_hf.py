"""The anchor: the same training step with the stack a user would otherwise pick — Hugging Face transformers + PEFT
+ bitsandbytes QLoRA — so minilora's numbers can be set beside it in the same call on the same card.

The recipe (as in the project's anchor scripts, shared/anchors/anchor_e2e.py and anchor_e2e_8b.py):
- a random-weight LlamaForCausalLM with the catalogue shape (Llama-3.2-1B: tied head; Llama-3-8B: untied), built on
  the device in bf16 (an fp32 CPU init of 8B parameters would cost minutes), saved with save_pretrained and
  reloaded 4-bit: NF4, double quantization, bf16 compute (mode "lora" keeps it 16-bit instead);
- SDPA attention; non-reentrant gradient checkpointing; enable_input_require_grads; LoRA r=16, alpha 16, no
  dropout, on all 7 projections; the model put back in train mode (from_pretrained returns eval mode, which
  silently skips checkpointing);
- AdamW lr 1e-4 on the trainable parameters; loss = model(input_ids=x, labels=x).loss.

    python -m benchmarks.anchor_hf --shape 1b --out DIR     # the anchor alone, harness-timed (GPU)
    python -m benchmarks.anchor_hf --smoke --out DIR        # tiny shape on a CPU: checks the code path only
"""
from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

import torch

from benchmarks import harness
from benchmarks.shapes import SHAPES, shape_of
from benchmarks.train_step import Step, built
from minilora.io.atomic import write_dir
from minilora.models.config import ModelConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_config(config: ModelConfig, seq: int):
    """transformers' LlamaConfig with minilora's catalogue shape (the anchor's fields, no rope scaling)."""
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                      num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                      num_key_value_heads=config.num_key_value_heads or config.num_attention_heads,
                      vocab_size=config.vocab_size, rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
                      max_position_embeddings=max(seq, config.max_position_embeddings),
                      tie_word_embeddings=config.tie_word_embeddings)
    cfg._attn_implementation = "sdpa"
    return cfg


def _saved_checkpoint(cfg, dtype: torch.dtype, device: str, cache_dir: str | None, log) -> str:
    """A directory holding a random bf16 checkpoint of cfg (reused from cache_dir when one was saved before)."""
    from transformers import LlamaForCausalLM
    if cache_dir and (pathlib.Path(cache_dir) / "config.json").is_file():
        log(f"anchor: reusing the saved random checkpoint in {cache_dir}")
        return cache_dir
    target = cache_dir or os.path.join(tempfile.mkdtemp(prefix="minilora-anchor-"), "checkpoint")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    write_dir(target, model.save_pretrained)  # staged and renamed: a cut-off save is never reused as a cache
    del model
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    log(f"anchor: built and saved a random checkpoint in {time.perf_counter() - t0:.0f} s")
    return target


def build_anchor_model(config: ModelConfig, seq: int, device: str, *, mode: str = "qlora",
                       dtype: torch.dtype = torch.bfloat16, cache_dir: str | None = None, log=print):
    """The HF + PEFT (+ bitsandbytes) model of the anchor recipe, on `device`, in train mode."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaForCausalLM
    if mode not in ("qlora", "lora"):
        raise ValueError(f"mode={mode!r}: the anchor is 'qlora' (bitsandbytes NF4) or 'lora' (16-bit base)")
    cfg = hf_config(config, seq)
    path = _saved_checkpoint(cfg, dtype, device, cache_dir, log)
    t0 = time.perf_counter()
    device_map = {"": torch.device(device).index or 0} if str(device).startswith("cuda") else {"": "cpu"}
    kwargs = {}
    if mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    # a reused checkpoint may have been saved for shorter sequences: the config of this call decides
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map,
                                             max_position_embeddings=cfg.max_position_embeddings, **kwargs)
    if model.config.max_position_embeddings != cfg.max_position_embeddings:
        raise RuntimeError("the anchor's config did not take max_position_embeddings from this call")
    log(f"anchor: loaded ({mode}) in {time.perf_counter() - t0:.0f} s")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=TARGETS)
    model = get_peft_model(model, lora)
    model.train()  # from_pretrained returns eval mode, in which transformers skips checkpointing
    if _checkpointing_flag(model.base_model.model) is False:
        raise RuntimeError("the anchor model did not turn gradient checkpointing on: the comparison would be unfair")
    return model


def _checkpointing_flag(inner):
    """transformers 5.x names the flag one of two ways (a property, or older, a method-less attribute)."""
    return next((getattr(inner, a) for a in ("is_activation_checkpointing", "is_gradient_checkpointing")
                 if hasattr(inner, a)), None)


def set_hf_checkpointing(model, on: bool) -> None:
    """Turn the anchor model's gradient checkpointing on or off, so one model and checkpoint serve both anchor
    points: HF's leanest setting and its fastest. Remembered on the model: switching only when it changes keeps the
    module walk out of the timed steps."""
    if getattr(model, "_anchor_checkpointing", None) == on:
        return
    inner = model.base_model.model
    verb = "activation_checkpointing" if hasattr(inner, "activation_checkpointing_enable") else \
        "gradient_checkpointing"
    if on:
        getattr(inner, f"{verb}_enable")(**{f"{verb}_kwargs": {"use_reentrant": False}})
    else:
        getattr(inner, f"{verb}_disable")()
    if _checkpointing_flag(inner) not in (on, None):
        raise RuntimeError(f"the anchor model did not turn gradient checkpointing {'on' if on else 'off'}")
    model._anchor_checkpointing = on


def anchor_steps(config: ModelConfig, batch: int, seq: int, device: str, *, mode: str = "qlora",
                 dtype: torch.dtype = torch.bfloat16, cache_dir: str | None = None, log=print) -> list:
    """The anchor twice, from one model: checkpointing on (the recipe) and off (HF's fastest), as harness stacks
    (`benchmarks.train_step.Variant`s sharing the model, optimizer and batch)."""
    from benchmarks.train_step import Variant
    step = anchor_step(config, batch, seq, device, mode=mode, dtype=dtype, cache_dir=cache_dir, log=log)
    on = Variant(f"{step.name} (checkpointing on)", step, lambda s: set_hf_checkpointing(s.model, True))
    off = Variant(f"{step.name} (checkpointing off)", step, lambda s: set_hf_checkpointing(s.model, False))
    return [on, off]


def anchor_step(config: ModelConfig, batch: int, seq: int, device: str, *, mode: str = "qlora",
                dtype: torch.dtype = torch.bfloat16, cache_dir: str | None = None, max_seq: int = 0,
                log=print) -> Step:
    """The anchor's training step as a harness-timeable Step (resident memory measured like minilora's).
    max_seq: the longest sequence it will be given later (its config's max_position_embeddings)."""
    name = f"HF+PEFT+bnb {mode}" if mode == "qlora" else "HF+PEFT lora"

    def make():
        model = build_anchor_model(config, max(seq, max_seq), device, mode=mode, dtype=dtype, cache_dir=cache_dir,
                                   log=log)
        return Step(name, model, device, batch, seq, forward=lambda x: model(input_ids=x, labels=x).loss)
    return built(make, device)


def default_cache_dir(shape: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"minilora-anchor-{shape}")


def main(argv=None) -> int:
    from benchmarks.train_step import add_throughput, model_flops_per_token
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--mode", choices=["qlora", "lora"], default="qlora")
    ap.add_argument("--batch", type=int, help="default: the shape's batch")
    ap.add_argument("--seq", type=int, default=2048)
    harness.add_run_args(ap, reps=2, warmup=1)
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        ap.error("the anchor needs a CUDA GPU for its real shapes; --smoke runs a tiny one on the CPU")
    device, name, config, batch, seq, dtype = shape_of(args)
    res = harness.Results("anchor-hf", device, notes=f"HF + PEFT + bitsandbytes anchor alone, {name} shape, "
                                                      f"B{batch} S{seq}, {args.mode}")
    step = anchor_step(config, batch, seq, device, mode=args.mode, dtype=dtype, log=res.log)
    row = res.compare(f"{name} B{batch} S{seq}", {step.name: step}, rounds=args.rounds, reps=args.reps,
                      warmup=args.warmup)[0]
    row["peak_gib"] = (row["peak_gib"] or 0.0) + step.resident_bytes / harness.GiB if row["peak_gib"] is not None \
        else None
    add_throughput(row, step.tokens, model_flops_per_token(config), None)
    row["loss"] = step.loss_value()
    harness.finish(res, args.out, harness.result_stem(f"anchor-hf-{args.shape}", device, args.smoke))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared tiny set-ups for the trainer/saving/CLI tests: a byte-level BPE tokenizer with a ChatML template trained in
milliseconds, and a tiny random Llama whose vocabulary matches it."""
from __future__ import annotations

import functools

import torch

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=None)
def _backend_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from minilora.train import dates_task
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    train, held = dates_task.make_splits(200, 20, seed=1)
    text = [f"{r['instruction']} {r['input']} {r['output']} user assistant system What day was I born?"
            for r in train + held]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text, trainer)
    return tok.to_str()


def tiny_tokenizer():
    from tokenizers import Tokenizer as Backend

    from minilora.io.tokenizer import Tokenizer
    return Tokenizer(Backend.from_str(_backend_json()), bos_token="<|im_start|>", eos_token="<|im_end|>",
                     pad_token="<|im_end|>", chat_template=CHATML)


def tiny_config(vocab_size: int | None = None, layers: int = 2, **kw):
    from minilora.models import ModelConfig
    vocab_size = vocab_size or len(tiny_tokenizer())
    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **kw):
    from minilora.models import build_model
    from minilora.models.registry import init_weights
    model = build_model(tiny_config(**kw))
    init_weights(model, std=0.05, seed=seed)
    with torch.no_grad():  # norms away from exactly 1 so a wrong norm mapping shows up in logits
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 7)))
    return model


def randomize_lora(model, std: float = 0.05, seed: int = 0):
    """LoRA B starts at zero; give it values so adapter tests compare something."""
    from minilora.lora import lora_layers
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * std)
    return model

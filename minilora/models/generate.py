"""Text generation with a KV cache: greedy, temperature, top-p (nucleus) sampling, stop on EOS."""
from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """logits (B, V) → next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token once the tokens before it already hold top_p of the mass (the first one always stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, eos_token_id: int | list[int] | None = None, seed: int | None = None,
             on_token=None) -> torch.Tensor:
    """Continue input_ids (B, T); returns (B, T + generated). Stops when every row has produced an EOS.

    temperature 0 is greedy decoding. ``on_token(ids)`` is called with each new (B,) token tensor (for streaming).
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                       device=input_ids.device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model(input_ids, use_cache=True)
    cache, tokens = out.past_key_values, [input_ids]
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]
        # NaN or inf logits (broken weights, an overflowing dtype) would decode as some arbitrary token — often EOS,
        # an empty reply — or fail inside sampling. Generation reads the device at every token anyway.
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError(f"the model's logits are NaN or inf (at new token {step + 1}): its weights or "
                                     "adapter hold non-finite values, or its dtype overflows (try dtype='float32' "
                                     "or 'bfloat16'); nothing it would generate means anything")
        next_ids = sample_next(logits, temperature, top_p, generator)
        if eos.numel():
            next_ids = torch.where(finished, eos[0], next_ids)  # finished rows keep emitting EOS
            finished |= torch.isin(next_ids, eos)
        tokens.append(next_ids[:, None])
        if on_token is not None:
            on_token(next_ids)
        if finished.all():
            break
        out = model(next_ids[:, None], past_key_values=cache, use_cache=True)
    model.train(was_training)
    return torch.cat(tokens, dim=1)

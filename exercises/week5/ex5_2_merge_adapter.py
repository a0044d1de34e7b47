"""Exercise 5.2 — merging a LoRA adapter into the base weights, as `save_pretrained_merged` does.

Read lessons/week5_saving.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex5_2` until it is green.
"""
import torch

PREFIX = "base_model.model."  # PEFT's wrapper path in front of every adapter key


def merged_weight(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, lora_alpha: float, r: int,
                  use_rslora: bool = False) -> torch.Tensor:
    """W (out, in) + scaling · B (out, r) @ A (r, in), with scaling = lora_alpha / r, or lora_alpha / sqrt(r) with
    rsLoRA. Compute in float32 and return in W's dtype (merging in 16-bit loses the small update's low bits)."""
    raise NotImplementedError("Exercise 5.2: merged_weight — see lessons/week5_saving.py")


def merge_state_dict(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], lora_alpha: float, r: int,
                     use_rslora: bool = False) -> dict[str, torch.Tensor]:
    """A new state dict: ``base`` (Hugging Face names like ``model.layers.0.self_attn.q_proj.weight``) with every
    layer named in ``adapter`` merged. Adapter keys look like
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (and ``….lora_B.weight``).
    Raise KeyError (message naming the key) if an adapter layer has no base weight: wrong model.
    """
    raise NotImplementedError("Exercise 5.2: merge_state_dict — see lessons/week5_saving.py")

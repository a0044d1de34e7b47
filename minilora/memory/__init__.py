"""Memory, estimated and measured, in one place.

- `estimate`: formulas — bytes of weights, gradients, optimizer state and activations for full fine-tuning, LoRA and
  QLoRA, from a `ModelConfig` alone;
- `measure`: the real tensors — a model's bytes by role, one training step's gradients and optimizer state, what a
  forward pass saves for the backward (saved-tensor hooks + custom Functions' attributes), and peak memory;
- `plan`: the memory budget for gradient checkpointing — per layer keep / recompute / offload, the fastest mix
  whose predicted peak fits (``use_gradient_checkpointing="auto"``).

The names of both are importable from here: ``from minilora.memory import estimate_memory, measure_activations``.
"""
from .estimate import *  # noqa: F403
from .estimate import __all__ as _estimate_names
from .measure import *  # noqa: F403
from .measure import __all__ as _measure_names
from .plan import *  # noqa: F403
from .plan import __all__ as _plan_names

__all__ = [*_estimate_names, *_measure_names, *_plan_names]

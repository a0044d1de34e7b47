"""Exercise 2.3 — teach minilora a new architecture by subclassing and registering it.

Read lessons/week2_model_family.py first (how Mistral and Qwen2 override only what differs from Llama). Replace
each `raise NotImplementedError(...)` with your code, then run `pytest -m ex2_3` until it is green.

The toy "gemma_like" architecture is Llama except for one thing Gemma does: token embeddings are multiplied by
sqrt(hidden_size) before the first layer (real Gemma also differs in its MLP activation, which the config's
`hidden_act` already selects, and in its RMSNorm, which this exercise leaves out).
"""
import torch
from torch import nn

from minilora.models import LlamaForCausalLM, ModelConfig

MODEL_TYPE = "gemma_like"


class ScaledEmbedding(nn.Embedding):
    """An nn.Embedding whose output rows are multiplied by sqrt(embedding_dim)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Exercise 2.3: ScaledEmbedding.forward — see lessons/week2_model_family.py")


class GemmaLikeForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with a ScaledEmbedding. Do not copy `forward`: change only what differs.

    After `super().__init__(config)`, put a ScaledEmbedding where `self.model.embed_tokens` is, holding the SAME
    weight Parameter (so a tied lm_head stays tied to it, and loaded weights land in one place).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        raise NotImplementedError("Exercise 2.3: GemmaLikeForCausalLM.__init__ — see lessons/week2_model_family.py")


def register() -> None:
    """Register GemmaLikeForCausalLM under MODEL_TYPE with minilora's registry (minilora.models.register_model),
    so that `build_model(ModelConfig(model_type="gemma_like", ...))` builds it."""
    raise NotImplementedError("Exercise 2.3: register — see lessons/week2_model_family.py")

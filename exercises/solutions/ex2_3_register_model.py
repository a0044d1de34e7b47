"""Exercise 2.3 — reference solution."""
import torch
from torch import nn

from minilora.models import LlamaForCausalLM, ModelConfig, register_model

MODEL_TYPE = "gemma_like"


class ScaledEmbedding(nn.Embedding):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Gemma rounds the factor to the activation dtype first; for fp32 that is the same number
        scale = torch.tensor(self.embedding_dim ** 0.5, dtype=self.weight.dtype)
        return super().forward(input_ids) * scale


class GemmaLikeForCausalLM(LlamaForCausalLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        old = self.model.embed_tokens
        scaled = ScaledEmbedding(old.num_embeddings, old.embedding_dim, device="meta")
        scaled.weight = old.weight  # the same Parameter: a tied lm_head still points at it
        self.model.embed_tokens = scaled


def register() -> None:
    register_model(MODEL_TYPE, GemmaLikeForCausalLM)

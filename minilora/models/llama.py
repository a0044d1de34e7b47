"""A Llama-style decoder: RMSNorm, rotate-half RoPE, grouped-query attention through SDPA, SwiGLU MLP.

Parameter names follow Hugging Face's (``model.layers.0.self_attn.q_proj.weight`` …) so checkpoints load by name.
Every op goes through `minilora.ops`, which picks Triton kernels or PyTorch references.
Shapes: B batch, T new tokens, S = cached + new tokens, C hidden size, hd head dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..linear4bit import Linear4bit
from ..lora import project, swiglu_mlp
from .checkpointing import run_layers
from .config import ModelConfig
from .kv_cache import KVCache
from .rotary import RotaryEmbedding
from .tiled import DEFAULT_TILE_TOKENS, tiled_backward, tiled_forward

# SDPA takes K/V with fewer heads than Q itself (enable_gqa=True) from torch 2.5 on
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # (B, T, V)
    loss: torch.Tensor | None = None
    past_key_values: KVCache | None = None


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        nh, nkv, hd, C = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
        qkv_bias = config.qkv_bias or config.attention_bias
        self.q_proj = nn.Linear(C, nh * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(C, nkv * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(C, nkv * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(nh * hd, C, bias=config.attention_bias)

    def forward(self, x, cos, sin, mask, is_causal, cache: KVCache | None):
        B, T, _ = x.shape
        hd = self.config.head_dim
        q, k, v = project(x, self.q_proj, self.k_proj, self.v_proj)  # with LoRA: one hand-written backward
        q = q.view(B, T, -1, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, -1, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, -1, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if cos.dtype != q.dtype:  # under autocast q comes out in the autocast dtype; the tables follow it
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = ops.rope(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hd)
        # grouped-query attention: each KV head serves n_rep query heads. Without a mask SDPA does that itself
        # (enable_gqa: no (B, nh, S, hd) copies of k and v, one op fewer each way; cuDNN and flash attention
        # both take it). With a mask the heads are repeated explicitly as before: not every SDPA kernel that
        # takes a mask takes GQA too, and the fallback would be the math path with its (B, nh, T, S) scores.
        n_rep = self.config.n_rep
        if isinstance(mask, ops.PackedSegments):  # packed rows: every example attends only within itself
            y = ops.segment_attention(q, k, v, mask)  # (B, nh, T, hd)
        elif n_rep > 1 and mask is None and _SDPA_HAS_GQA:
            y = ops.attention(q, k, v, is_causal=is_causal, enable_gqa=True)  # (B, nh, T, hd)
        else:
            if n_rep > 1:
                k = k.repeat_interleave(n_rep, dim=1)
                v = v.repeat_interleave(n_rep, dim=1)
            y = ops.attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, nh * hd)
        (out,) = project(y, self.o_proj)
        return out


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)
        self.act = config.hidden_act  # one of config.HIDDEN_ACTS (checked by ModelConfig)

    def forward(self, x):
        if self.act == "silu":
            return swiglu_mlp(x, self.gate_proj, self.up_proj, self.down_proj)  # with LoRA: hand-written backward
        gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, I) each
        return self.down_proj(ops.geglu(gate, up, "tanh" if self.act == "gelu_pytorch_tanh" else "none"))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, attention_cls=LlamaAttention):
        super().__init__()
        self.self_attn = attention_cls(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    # tokens per tile of the MLP half when it runs without a graph or inside the offloaded checkpoint's backward
    # (minilora.models.tiled); None runs it untiled
    tile_tokens: int | None = DEFAULT_TILE_TOKENS

    def attention_half(self, x, cos, sin, mask=None, is_causal=True, cache=None):
        return x + self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, cache)

    def mlp_half(self, h):
        return h + self.mlp(self.post_attention_layernorm(h))  # token by token: it can run in tiles

    def forward(self, x, cos, sin, mask=None, is_causal=True, cache=None):
        h = self.attention_half(x, cos, sin, mask, is_causal, cache)
        if not torch.is_grad_enabled():
            return tiled_forward(self.mlp_half, h, self.tile_tokens)
        return self.mlp_half(h)

    def recompute_backward(self, x, grad_out, cos, sin, mask=None, is_causal=True, cache=None):
        """The offloaded checkpoint's backward: recompute the layer from x and backpropagate grad_out, the MLP half
        one tile at a time (recomputed and backpropagated together). Fills x.grad and the weights' .grad."""
        h = self.attention_half(x, cos, sin, mask, is_causal, cache)
        if self.tile_tokens is None or h.numel() // h.shape[-1] <= self.tile_tokens:
            torch.autograd.backward(self.mlp_half(h), grad_out)
            return
        grad_h, param_grads = tiled_backward(self.mlp_half, h, grad_out, self.tile_tokens,
                                             params=[*self.mlp.parameters(), *self.post_attention_layernorm.parameters()])
        # one backward call: through the attention half from h, and into each MLP weight's .grad once
        torch.autograd.backward([h, *param_grads], [grad_h, *param_grads.values()])


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, attention_cls=LlamaAttention):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, attention_cls) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)


class LlamaForCausalLM(nn.Module):
    """The model learners hold: ``model(input_ids, labels=None)`` returns `CausalLMOutput`."""

    attention_cls = LlamaAttention

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.attention_cls)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one matrix serves input and output
        self.gradient_checkpointing: bool | str = False  # False, True/"recompute", or "offload"

    # --- attention masks -------------------------------------------------------------------------------------
    def allowed_positions(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Which key positions each query position may attend to: causal (no peeking at the future)."""
        return k_pos <= q_pos

    def plain_causal_suffices(self, total_len: int) -> bool:
        """True when SDPA's built-in causal mask is exactly `allowed_positions` (no extra rule applies)."""
        return True

    def packed_mask(self, segment_ids: torch.Tensor):
        """Packed rows (segment_ids (B, T): one id per example): a token may attend to a token of its own example
        that `allowed_positions` allows — the same rule as for the example alone, never a (B, 1, T, T) mask."""
        return ops.PackedSegments(segment_ids, self.allowed_positions)  # built once per forward

    def attention_mask(self, T: int, past: int, attention_mask: torch.Tensor | None, device):
        """Return (mask, is_causal) for SDPA. mask is bool (B or 1, 1, T, S), True = may attend.

        attention_mask may be (B, S) with 1 for real tokens and 0 for padding, or a ready (B, 1, T, S) bool mask.
        (Packed rows pass segment_ids to forward instead: see `packed_mask`.)
        """
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask.to(torch.bool), False
        S = past + T
        if attention_mask is None and self.plain_causal_suffices(S):
            if past == 0:
                return None, True
            if T == 1:
                return None, False  # one new token may see every cached one
        q_pos = torch.arange(past, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        allowed = self.allowed_positions(q_pos, k_pos)[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            if attention_mask.shape[-1] != S:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the input "
                                 f"and cache hold {S}: pass a (B, cached + new) mask")
            allowed = allowed & attention_mask[:, None, None, :].bool()
            allowed = allowed | (q_pos == k_pos)  # a padding query sees itself, so no row is empty (NaN)
        return allowed, False

    # --- forward ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                num_items_in_batch: int | torch.Tensor | None = None,
                return_logits: bool = True) -> CausalLMOutput:
        """input_ids (B, T) → logits (B, T, V); with labels (B, T) also the next-token loss.

        labels use -100 for tokens that carry no loss; the shift by one happens here. ``num_items_in_batch``
        divides the summed loss (gradient accumulation passes the token count of the whole accumulated batch).
        ``return_logits=False`` (with labels) skips the (B, T, V) logits: the loss comes from the fused linear +
        cross-entropy, chunked over tokens on the Triton path, and ``.logits`` is None.
        ``segment_ids`` (B, T) marks packed rows (several examples in one row, one id per example): each example
        attends only within itself, and positions restart at 0 for each unless ``position_ids`` are given.
        """
        if not return_logits and labels is None:
            raise ValueError("return_logits=False needs labels: without a loss there is nothing to return")
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, seq), got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        ops.check_token_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = KVCache(self.config.num_hidden_layers)
        past = len(past_key_values) if past_key_values is not None else 0
        if segment_ids is not None:
            ops.check_segment_ids(segment_ids, B, T)
            if past or use_cache or attention_mask is not None:
                raise ValueError("segment_ids (packed rows) is for training and scoring whole rows: pass it "
                                 "without attention_mask, past_key_values or use_cache")
        if position_ids is None:
            position_ids = ops.positions_from_segments(segment_ids) if segment_ids is not None else \
                torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)  # (B, T, hd)
        if segment_ids is not None:
            mask, is_causal = self.packed_mask(segment_ids), False
        else:
            mask, is_causal = self.attention_mask(T, past, attention_mask, input_ids.device)
        checkpointing = self.gradient_checkpointing if (self.training and torch.is_grad_enabled()) else False
        x = run_layers(self.model.layers, checkpointing, x, cos, sin, mask, is_causal, past_key_values)
        x = self.model.norm(x)
        if not return_logits:
            return CausalLMOutput(logits=None, loss=self.fused_loss(x, labels, num_items_in_batch),
                                  past_key_values=past_key_values)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss(logits, labels, num_items_in_batch)
        return CausalLMOutput(logits=logits, loss=loss, past_key_values=past_key_values)

    def loss(self, logits, labels, num_items_in_batch=None):
        return ops.next_token_loss(logits, labels, num_items_in_batch)

    def fused_loss(self, hidden, labels, num_items_in_batch=None):
        """The same loss from the final hidden states (B, T, C), without materializing all logits at once."""
        if not isinstance(self.lm_head, nn.Linear):  # e.g. a LoRA-wrapped head: take the plain route
            return self.loss(self.lm_head(hidden), labels, num_items_in_batch)
        return ops.fused_next_token_loss(hidden, self.lm_head.weight, labels, num_items_in_batch, self.lm_head.bias)

    @torch.no_grad()
    def generate(self, input_ids, **kwargs):
        """Sample a continuation; see `minilora.models.generate.generate` for the arguments."""
        from .generate import generate
        return generate(self, input_ids, **kwargs)

    def num_parameters(self, trainable_only: bool = False) -> int:
        seen, total = set(), 0
        for module in self.modules():
            for p in module.parameters(recurse=False):
                if id(p) in seen or (trainable_only and not p.requires_grad):
                    continue
                seen.add(id(p))  # tied weights are counted once
                # a 4-bit layer packs two weights per uint8 byte: count the weights it stands for
                packed = isinstance(module, Linear4bit) and p is module.weight
                total += module.num_weights() if packed else p.numel()
        return total

"""Rotary position embedding tables: cos/sin for given positions, with optional Llama-3 frequency scaling."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def llama3_scaled_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama-3 keeps high frequencies, divides low ones by `factor`, and blends the band in between.

    A frequency's wavelength $\\lambda = 2\\pi / f$ is compared with the original context: dimensions that turn
    less than `low_freq_factor` times over the original context are stretched, so longer contexts stay in range.
    """
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    stretched = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    blend = (old_context / wavelen - low) / (high - low)  # 0 at the low edge of the band, 1 at the high edge
    blended = (1 - blend) * stretched / factor + blend * stretched
    in_band = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(in_band, blended, stretched)


class RotaryEmbedding(nn.Module):
    """Turns position ids (B, T) into cos, sin tables (B, T, head_dim) for rotate-half RoPE."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        if config.rope_type == "llama3":  # checked by ModelConfig
            inv_freq = llama3_scaled_inv_freq(inv_freq, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        # fp32 on purpose: positions up to 128k times a frequency lose digits in 16-bit
        freqs = position_ids.float()[:, :, None] * self.inv_freq.float()[None, None, :]  # (B, T, hd/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # rotate-half: dim i and i + hd/2 share an angle
        return angles.cos().to(dtype), angles.sin().to(dtype)

"""NF4, the 4-bit NormalFloat data type of QLoRA: 16 levels placed where a normal distribution puts its mass.

Pretrained weights inside one small block look like samples of a zero-mean normal. Scale a block by its largest
magnitude (its absmax) and every value lands in [-1, 1]; the best 16 levels for such values are *quantiles* of
N(0, 1), so that each level is hit about equally often. QLoRA makes the table asymmetric so that zero is exact:

- 8 positive levels: the quantiles Φ⁻¹(p) for 8 probabilities p evenly spaced from `offset` down to 1/2, without 1/2;
- 7 negative levels: the same with 7 probabilities, mirrored;
- one exact 0 (Φ⁻¹(1/2) = 0), the level the 8 + 7 split leaves for it;
- divide by the largest magnitude, so the table spans exactly [-1, 1].

The `offset` keeps away from p = 1 (where Φ⁻¹ is infinite): it is the midpoint of 1 − 1/(2·15) and 1 − 1/(2·16),
the tail probabilities of a 15- and a 16-level symmetric quantization.

`derive_nf4_codebook()` computes the table; `NF4_CODEBOOK` holds the values QLoRA published (and bitsandbytes
ships). They agree to ~2e-7; the runtime uses the published float32 values so that bytes match bitsandbytes exactly.
"""
from __future__ import annotations

import torch

from .dynamic8 import dynamic_map_8bit, shared_dynamic_map  # noqa: F401  (the 8-bit map NF4 double quant uses)

# The 16 NF4 levels as published with QLoRA (Dettmers et al., 2023, appendix E), sorted, as float32.
_NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_CODEBOOK = torch.tensor(_NF4_PUBLISHED, dtype=torch.float32)
NF4_ZERO_CODE = 7  # index of the exact 0.0 level (also what bitsandbytes pads an odd tensor with)


def nf4_offset(n_neg: int = 7, n_pos: int = 8) -> float:
    """Largest probability used: halfway between the tail probabilities of 2·n_neg+1 and 2·n_pos levels."""
    return 0.5 * ((1 - 1 / (2 * (2 * n_neg + 1))) + (1 - 1 / (2 * 2 * n_pos)))


def derive_nf4_codebook(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Compute the 16 NF4 levels from quantiles of N(0, 1) (sorted ascending, in [-1, 1])."""
    offset = nf4_offset()
    # p evenly spaced from offset down to 1/2; drop the last (p = 1/2 is the zero level, added once below)
    p_pos = torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1]  # 8 probabilities
    p_neg = torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1]  # 7 probabilities
    positive = torch.special.ndtri(p_pos)  # Φ⁻¹: the value below which a fraction p of N(0, 1) lies
    negative = -torch.special.ndtri(p_neg)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.abs().max()).to(dtype)  # normalise: the table spans [-1, 1]


def nf4_codebook(device=None) -> torch.Tensor:
    """The published NF4 table (float32, 16 values) on `device`."""
    return NF4_CODEBOOK.to(device) if device is not None else NF4_CODEBOOK.clone()


def nf4_midpoints(codebook: torch.Tensor | None = None) -> torch.Tensor:
    """The 15 decision boundaries between neighbouring levels: a scaled value goes to the nearest level."""
    cb = NF4_CODEBOOK if codebook is None else codebook
    return (cb[:-1] + cb[1:]) / 2  # float32 arithmetic, as bitsandbytes computes them


def uniform_int4_codebook() -> torch.Tensor:
    """For comparison: 16 evenly spaced levels over [-1, 1] (symmetric absmax int4 with 15 used steps + 1)."""
    return torch.linspace(-1.0, 1.0, 16, dtype=torch.float32)


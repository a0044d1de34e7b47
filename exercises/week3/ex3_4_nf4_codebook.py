"""Exercise 3.4 — derive the 16 NF4 levels from quantiles of the standard normal distribution.

Read lessons/week3_nf4.py first (section 1). Replace the `raise NotImplementedError(...)` with your code, then run
`pytest -m ex3_4` until it is green.
"""
import torch


def nf4_levels() -> torch.Tensor:
    """Return the 16 NF4 levels, sorted ascending, float64, spanning exactly [-1, 1].

    Recipe (QLoRA, appendix E):
      offset = ((1 - 1/(2·15)) + (1 - 1/(2·16))) / 2   (≈ 0.9677: stay away from p = 1, where Φ⁻¹ is infinite)
      8 positive levels: Φ⁻¹(p) for p = the first 8 of 9 values evenly spaced from offset down to 0.5
      7 negative levels: −Φ⁻¹(p) for p = the first 7 of 8 values evenly spaced from offset down to 0.5
      one exact 0
    then divide everything by the largest magnitude. Φ⁻¹ is `torch.special.ndtri`; `torch.linspace` spaces them.
    """
    raise NotImplementedError("Exercise 3.4: nf4_levels — see lessons/week3_nf4.py")

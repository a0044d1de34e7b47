"""Exercise 2.4 — causal attention with grouped-query heads and an optional sliding window, by hand.

Read lessons/week2_attention.py first. Replace the `raise NotImplementedError(...)` with your code, then run
`pytest exercises -m ex2_4` until it is green.

Write it from plain tensor operations (matmul, masked_fill, softmax, ...): calling
`torch.nn.functional.scaled_dot_product_attention` is not allowed — in any branch, under any name, or through a
function that calls it for you (nn.MultiheadAttention) — the tests compare your result with it.
"""
import torch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              window: int | None = None) -> torch.Tensor:
    """Multi-head attention $\\mathrm{softmax}(QK^\\top/\\sqrt{hd} + M)\\,V$ for q (B, nh, T, hd), k and v (B, nkv, T, hd).

    - Grouped-query attention: nkv may be smaller than nh; each key/value head serves n_rep = nh / nkv
      *consecutive* query heads (query heads 0..n_rep-1 use KV head 0, and so on). If nh is not a multiple of nkv,
      raise ValueError saying so.
    - causal=True: query position i may attend only to key positions j <= i.
    - window=W (needs causal=True, else ValueError): additionally only the W most recent positions, itself
      included, i.e. i - j < W (Mistral's rule). W must be >= 1 (else ValueError).
    Return (B, nh, T, hd) in q's dtype; gradients must flow to q, k and v.
    """
    raise NotImplementedError("Exercise 2.4: attention — see lessons/week2_attention.py")

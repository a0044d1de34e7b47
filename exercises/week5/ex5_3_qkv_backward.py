"""Exercise 5.3 — the Q/K/V backward: three LoRA projections of one input, one dx.

Read lessons/week5_triton_fast_lora.py first (section 5 walks through `LoRA_QKV`). Replace the
`raise NotImplementedError(...)` with your code, then run `pytest -m ex5_3` until it is green. Plain PyTorch
matmuls, no autograd.

Attention projects the same normed hidden states x (N, C) three times, each a LoRA projection:
    q = x Wq^T + sq (x Aq^T) Bq^T,   k = ...,   v = ...
Given dq, dk, dv, return dx and each projection's dA, dB. Since x feeds all three, its gradient is the SUM
    dx = dq Wq + sq (dq Bq) Aq  +  dk Wk + sk (dk Bk) Ak  +  dv Wv + sv (dv Bv) Av
Two rules the tests check, because they are the point of a fused backward:
- dx is ONE (N, C) buffer: create it once (e.g. dx = dq @ Wq) and add every other term into it in place with
  `dx.addmm_(a, b, alpha=s)` (which computes dx += s · a @ b without a temporary (N, C) result);
- keep every intermediate thin: (dy B) is (N, r); never form the (out, C) matrix B A.
"""
import torch


def qkv_backward(x: torch.Tensor, projections: list, d_outs: list) -> tuple:
    """x (N, C); projections = [(W, A, B, s)] for q, k, v with W (out_i, C), A (r, C), B (out_i, r);
    d_outs = [dq, dk, dv] with shapes (N, out_i). Return (dx, [dA_q, dA_k, dA_v], [dB_q, dB_k, dB_v])."""
    raise NotImplementedError("Exercise 5.3: qkv_backward — see lessons/week5_triton_fast_lora.py")

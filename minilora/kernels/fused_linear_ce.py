"""Fused linear + cross-entropy: the loss of `hidden @ weight.T` without ever holding the full logits.

Shapes: hidden (N, H) — the final hidden states, one row per token; weight (V, H) — the lm_head; labels (N,).
Loss contract as `cross_entropy_reference`: Σ over non-ignored tokens / num_items.

The full logits (N, V) are the biggest tensor of a training step (8192 × 128256 bf16 = 2 GiB, and eager PyTorch
keeps an fp32 copy and an fp32 gradient too). Here the tokens are cut into chunks of C rows. For each chunk:

1. logits_c = hidden_c @ weight.T                     (C, V)   — the only (·, V) buffer, reused by every chunk
2. the cross-entropy kernel: lse and loss per row, then dL/dlogits_c written over logits_c in place (one launch)
3. dhidden_c = dlogits_c @ weight                      (C, H)   — written straight into the (N, H) gradient
4. dweight += dlogits_c.T @ hidden_c                    (V, H)   — accumulated across chunks

So the backward is done *during the forward* (the loss is a scalar: its upstream gradient is a number we can apply
at the end). Memory: one (C, V) chunk instead of (N, V) logits; speed: three matmuls, like the unfused version.
The price is that chunk-sized matmuls are less efficient, and dweight is read and written once per chunk: bigger
chunks are faster, smaller chunks are leaner (`chunk_size`).
"""
from __future__ import annotations

import torch

from . import IGNORE_INDEX
from ._triton import check_tensor
from .checks import check_float, check_positive, check_same_device
from .cross_entropy import (
    _count,
    check_labels,
    cross_entropy_backward_,
    cross_entropy_forward,
    cross_entropy_forward_backward_,
    cross_entropy_reference,
    token_losses_sum,
)

CHUNK_BYTES = 64 * 2**20  # default: a chunk of logits of about 64 MiB
ONE_LAUNCH_CE = True  # per chunk: one kernel for loss + gradient (True) or the two kernels of cross_entropy_fast


def fused_linear_cross_entropy_reference(hidden, weight, labels, ignore_index=IGNORE_INDEX, num_items=None,
                                         logit_scale=None, softcap=None, bias=None):
    """The unfused definition: materialize all logits, then cross-entropy."""
    check_fused_linear_cross_entropy(hidden, weight, labels, ignore_index, num_items, logit_scale, softcap, bias)
    logits = torch.nn.functional.linear(hidden, weight, bias)  # what nn.Linear computes: the same bits as the head
    return cross_entropy_reference(logits, labels, ignore_index, num_items, logit_scale, softcap)


def check_fused_linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE_INDEX, num_items=None, logit_scale=None,
                                     softcap=None, bias=None) -> None:
    """The checks both paths make: hidden (N, H), weight (V, H) and bias (V,) of one dtype and device, plus the
    cross-entropy's own checks (labels, num_items, logit_scale, softcap)."""
    check_float("hidden", hidden)
    check_float("weight", weight)
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"hidden must be (tokens, H) and weight (vocab, H); got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}: flatten the batch with hidden.view(-1, H)")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden has {hidden.shape[1]} features but weight expects {weight.shape[1]} "
                         "(weight is (vocab, hidden), like nn.Linear.weight)")
    if hidden.dtype != weight.dtype or hidden.device != weight.device:
        raise TypeError(f"hidden ({hidden.dtype}, {hidden.device}) and weight ({weight.dtype}, {weight.device}) "
                        "must share dtype and device")
    if bias is not None:
        check_float("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        check_same_device("bias and weight", bias, weight)
    check_labels(labels, hidden.shape[0], weight.shape[0], hidden.device, ignore_index, num_items)
    check_positive("logit_scale", logit_scale, optional=True)
    check_positive("softcap", softcap, optional=True)


def default_chunk_size(n_tokens: int, vocab: int, itemsize: int, weight_trainable: bool = False) -> int:
    """Rows per chunk so one chunk of logits is about CHUNK_BYTES (4x that when the head itself trains); a multiple
    of 64 (matmul-friendly).

    Why the two sizes (H200, Llama-3-8B head, 8192 tokens, benchmarks/results/ce-lora-*.json): a frozen head (LoRA)
    holds only the chunk's logits, so small chunks keep it near 0.12 GiB and already beat eager PyTorch; a trainable
    head holds its whole (vocab, hidden) gradient anyway (1 GiB here), and 4x larger chunks make each chunk's
    weight-gradient matmul efficient enough to cut the time by about a fifth for 0.18 GiB more."""
    budget = CHUNK_BYTES * (4 if weight_trainable else 1)
    rows = max(64, (budget // (vocab * itemsize)) // 64 * 64)
    return min(rows, max(n_tokens, 1))


class FusedLinearCrossEntropyFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, num_items, logit_scale, softcap, chunk_size):
        N, H = hidden.shape
        V = weight.shape[0]
        need_dx, need_dw = hidden.requires_grad, weight.requires_grad
        need_db = bias is not None and bias.requires_grad
        count = _count(labels, ignore_index, num_items)
        grad_scale = (1.0 / torch.as_tensor(count, dtype=torch.float32, device=hidden.device)).reshape(1)

        d_hidden = torch.empty_like(hidden) if need_dx else None
        d_weight = torch.zeros_like(weight) if need_dw else None
        d_bias = torch.zeros(V, dtype=torch.float32, device=hidden.device) if need_db else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        logits_buffer = torch.empty(min(chunk_size, N), V, dtype=hidden.dtype, device=hidden.device)

        for start in range(0, N, chunk_size):
            end = min(start + chunk_size, N)
            x_c, y_c = hidden[start:end], labels[start:end]
            logits_c = logits_buffer[: end - start]
            # 1. this chunk's logits, into the one reused buffer
            if bias is not None:
                torch.addmm(bias, x_c, weight.T, out=logits_c)
            else:
                torch.matmul(x_c, weight.T, out=logits_c)
            # 2. loss of the chunk, then its gradient over the logits in place
            if not (need_dx or need_dw or need_db):
                lse, label_logit = cross_entropy_forward(logits_c, y_c, ignore_index, logit_scale, softcap)
                total += token_losses_sum(lse, label_logit, y_c, ignore_index)
                continue
            if ONE_LAUNCH_CE:  # loss and gradient in one kernel, each row's second read mostly from L2
                total += cross_entropy_forward_backward_(logits_c, y_c, grad_scale, ignore_index, logit_scale,
                                                         softcap).sum()
                dlogits_c = logits_c
            else:  # the two kernels of cross_entropy_fast: chunked lse, then the gradient
                lse, label_logit = cross_entropy_forward(logits_c, y_c, ignore_index, logit_scale, softcap)
                total += token_losses_sum(lse, label_logit, y_c, ignore_index)
                dlogits_c = cross_entropy_backward_(logits_c, y_c, lse, grad_scale, ignore_index, logit_scale,
                                                    softcap)
            # 3. and 4. the two matmuls of the linear layer's backward, one chunk at a time
            if need_dx:
                torch.matmul(dlogits_c, weight, out=d_hidden[start:end])
            if need_dw:
                d_weight.addmm_(dlogits_c.T, x_c)
            if need_db:
                d_bias += dlogits_c.float().sum(0)
        # kept as plain attributes (not save_for_backward) and dropped in backward, so that the gradients handed
        # back are referenced by autograd alone and become .grad without a copy
        ctx.grads = (d_hidden, d_weight, d_bias)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total / count

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("the fused linear cross-entropy hands its gradients over once: backward cannot run "
                               "twice (retain_graph=True); use the unfused loss for that")
        d_hidden, d_weight, d_bias = ctx.grads
        ctx.grads = None
        # the gradients were computed for an upstream gradient of 1; scale them by the caller's. Always: asking
        # "is it 1?" would read a GPU value on the host and stall the step (one small multiply costs far less)
        for t in (d_hidden, d_weight, d_bias):
            if t is not None:
                t.mul_(grad_loss.to(t.dtype))
        if d_bias is not None:
            d_bias = d_bias.to(ctx.bias_dtype)
        return d_hidden, d_weight, d_bias, None, None, None, None, None, None


def fused_linear_cross_entropy_fast(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                    ignore_index: int = IGNORE_INDEX, num_items=None, logit_scale: float | None = None,
                                    softcap: float | None = None, bias: torch.Tensor | None = None,
                                    chunk_size: int | None = None) -> torch.Tensor:
    """Loss of (hidden @ weight.T + bias) against labels, chunked over tokens (see the module docstring)."""
    check_fused_linear_cross_entropy(hidden, weight, labels, ignore_index, num_items, logit_scale, softcap, bias)
    if not hidden.is_contiguous() or not weight.is_contiguous():
        raise ValueError("hidden and weight must be contiguous: call .contiguous() first")
    check_tensor("hidden", hidden)  # what only the kernels need: a supported dtype and device
    if not labels.is_contiguous():
        raise ValueError("labels is not contiguous: call .contiguous() first")
    if chunk_size is None:
        chunk_size = default_chunk_size(hidden.shape[0], weight.shape[0], hidden.element_size(), weight.requires_grad)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk_size}")
    return FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, labels, ignore_index, num_items,
                                                 logit_scale, softcap, chunk_size)

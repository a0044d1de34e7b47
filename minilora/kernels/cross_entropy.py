"""Cross-entropy over a large vocabulary.

Shapes: logits (N, V), labels (N,) with `ignore_index` marking tokens that carry no loss.
The loss is a *sum* over the non-ignored tokens divided by `num_items` (default: their count). Passing the token
count of a whole accumulated batch makes gradient accumulation exact (a total over tokens, not a mean of means).
Optional `logit_scale` multiplies the logits and `softcap` applies $c \\tanh(z / c)$ before the softmax.

Why a kernel: at N = 8192 tokens and V = 128256 the bf16 logits are 2 GiB, and the textbook recipe
(`logits.float()` → softmax → subtract the one-hot) makes an fp32 copy (4 GiB) plus an fp32 gradient (4 GiB more).
The kernel below never copies the logits:

- forward: ONE read of each row with a running max and a running sum of exponentials (the "online log-sum-exp"),
  so only one fp32 number per row survives: $\\mathrm{lse} = \\log \\sum_j e^{z_j}$. Rows longer than 65536 are
  split into chunks handled by separate programs in parallel; their partial lse values are combined afterwards.
- backward: the gradient $\\partial L / \\partial z_j = (\\mathrm{softmax}_j - [j = y]) \\cdot g$ is written *into the
  logits' own memory* (they are not needed any more), so no (N, V) buffer is allocated at all.

Layout of the Triton part (Liger-style): `_ce_forward_kernel` / `_ce_backward_kernel` → `cross_entropy_forward` /
`cross_entropy_backward_` → `CrossEntropyFunction` → `cross_entropy_fast`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import IGNORE_INDEX
from ._triton import check_tensor, host_checks, interpreter_on, tl, triton
from .checks import check_float, check_positive

MAX_CHUNK = 65536  # one program handles at most this many columns of a row; longer rows are chunked
# launch shapes on a GPU (columns loaded per step of the forward loop / per backward program, warps per program);
# benchmarks/bench_ce_lora.py sweeps a few. The interpreter uses 1024-wide blocks (cheaper on a CPU).
FORWARD_BLOCK, BACKWARD_BLOCK, NUM_WARPS = 4096, 4096, 8


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                            num_items: int | float | torch.Tensor | None = None,
                            logit_scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    check_cross_entropy(logits, labels, ignore_index, num_items, logit_scale, softcap)
    # the reference upcasts the whole (N, V) block to fp32 (fp64 stays fp64): the memory the kernel avoids
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logit_scale is not None:
        z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    total = F.cross_entropy(z, labels, ignore_index=ignore_index, reduction="sum")
    if num_items is None:
        num_items = (labels != ignore_index).sum().clamp(min=1)
    return total / num_items


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _transform(z, SCALE: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """z (fp32) → the logit the softmax sees: optional scale, then optional soft-cap c·tanh(z/c)."""
    if HAS_SCALE:
        z = z * SCALE
    if HAS_SOFTCAP:
        # tanh(u) = 1 - 2 / (exp(2u) + 1): exact at both ends (exp → inf gives 1, exp → 0 gives -1)
        z = SOFTCAP * (1.0 - 2.0 / (tl.exp(2.0 * z / SOFTCAP) + 1.0))
    return z


@triton.jit
def _ce_forward_kernel(
    logits_ptr, stride_row,        # (N, V) any float dtype, unit stride along V
    labels_ptr,                    # (N,) int
    lse_ptr,                       # (N, n_chunks) fp32 out: log-sum-exp of each chunk of each row
    label_logit_ptr,               # (N,) fp32 out: the (transformed) logit of the label, 0 when ignored
    V, ignore_index,
    SCALE: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    # 1. which row and which chunk of it this program owns (int64: N·V can pass 2**31)
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    row_ptr = logits_ptr + row * stride_row
    start = chunk * CHUNK

    # 2. a running max m (one number) and running sums s (one per lane). When a block raises the max from m to
    #    m_new, everything summed so far is rescaled by exp(m - m_new): sum_j e^{z_j - m_new} stays exact.
    #    m starts at a large finite negative number (not -inf) so that exp(m - m_new) is never exp(-inf + inf).
    m = -1e30
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for offset in range(0, CHUNK, BLOCK):
        cols = start + offset + tl.arange(0, BLOCK)
        in_row = cols < V
        z = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
        # columns past the row end must count as exp(-inf) = 0; mask AFTER the transform (softcap(-inf) = -c)
        z = tl.where(in_row, _transform(z, SCALE, SOFTCAP, HAS_SCALE, HAS_SOFTCAP), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.exp(z - m_new)  # one exp per logit
        m = m_new

    # 3. lse = m + log(sum of the lanes)
    lse = m + tl.log(tl.sum(s, axis=0))
    tl.store(lse_ptr + row * n_chunks + chunk, lse)

    # 4. the chunk-0 program also fetches the label's logit (a single scalar load). A label outside [0, V) has no
    #    logit: it is never read past the row, and its loss is NaN — what the trainer's one read of the loss sees
    #    (on a GPU the host does not look at label values: that would wait for the device)
    label = tl.load(labels_ptr + row).to(tl.int64)
    is_target = (label != ignore_index) & (chunk == 0)
    in_vocab = (label >= 0) & (label < V)
    z_label = tl.load(row_ptr + label, mask=is_target & in_vocab, other=0.0).to(tl.float32)
    z_label = tl.where(in_vocab, _transform(z_label, SCALE, SOFTCAP, HAS_SCALE, HAS_SOFTCAP), float("nan"))
    tl.store(label_logit_ptr + row, tl.where(is_target, z_label, 0.0), mask=chunk == 0)


@triton.jit
def _ce_backward_kernel(
    logits_ptr, stride_row,        # (N, V): read, then overwritten with dL/dlogits (same dtype)
    labels_ptr, lse_ptr,           # (N,) int, (N,) fp32 full-row log-sum-exp
    grad_scale_ptr,                # (1,) fp32: dL_total / num_items
    V, ignore_index,
    SCALE: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # 1. one program per (row, block of columns)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < V
    row_ptr = logits_ptr + row * stride_row

    label = tl.load(labels_ptr + row).to(tl.int64)
    g = tl.load(grad_scale_ptr)
    g = tl.where(label != ignore_index, g, 0.0)  # ignored rows get a zero gradient
    lse = tl.load(lse_ptr + row)

    # 2. dL/dz' = (softmax(z') - onehot) * g, with z' the transformed logit
    z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        z = z * SCALE
    if HAS_SOFTCAP:
        t = 1.0 - 2.0 / (tl.exp(2.0 * z / SOFTCAP) + 1.0)  # tanh(z / c)
        z = SOFTCAP * t
    dz = tl.exp(z - lse) - tl.where(cols == label, 1.0, 0.0)
    dz = dz * g

    # 3. chain rule back through the transform: d(c tanh(z/c))/dz = 1 - tanh², d(scale·z)/dz = scale
    if HAS_SOFTCAP:
        dz = dz * (1.0 - t * t)
    if HAS_SCALE:
        dz = dz * SCALE
    tl.store(row_ptr + cols, dz.to(logits_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ce_row_forward_backward_kernel(
    logits_ptr, stride_row,        # (N, V): read twice, then overwritten with dL/dlogits
    labels_ptr, grad_scale_ptr,    # (N,) int, (1,) fp32 = 1 / num_items
    loss_ptr,                      # (N,) fp32 out: lse − z_label per row (0 when ignored)
    V, ignore_index,
    SCALE: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Loss AND gradient in one launch, one program per whole row (used by the fused linear + CE on its chunks).

    The second pass re-reads a row this same program has just read, so it mostly comes from the L2 cache.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    # 1. pass one: running max and sum over the whole row → lse
    m = -1e30
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for offset in range(0, V, BLOCK):
        cols = offset + tl.arange(0, BLOCK)
        in_row = cols < V
        z = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
        z = tl.where(in_row, _transform(z, SCALE, SOFTCAP, HAS_SCALE, HAS_SOFTCAP), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.exp(z - m_new)
        m = m_new
    lse = m + tl.log(tl.sum(s, axis=0))
    # 2. the row's loss
    label = tl.load(labels_ptr + row).to(tl.int64)
    is_target = label != ignore_index
    in_vocab = (label >= 0) & (label < V)  # outside: no read past the row, a NaN loss (as in the forward kernel)
    z_label = tl.load(row_ptr + label, mask=is_target & in_vocab, other=0.0).to(tl.float32)
    z_label = tl.where(in_vocab, _transform(z_label, SCALE, SOFTCAP, HAS_SCALE, HAS_SOFTCAP), float("nan"))
    tl.store(loss_ptr + row, tl.where(is_target, lse - z_label, 0.0))
    # 3. pass two: the gradient, written over the logits
    g = tl.where(is_target, tl.load(grad_scale_ptr), 0.0)
    for offset in range(0, V, BLOCK):
        cols = offset + tl.arange(0, BLOCK)
        mask = cols < V
        z = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            z = z * SCALE
        if HAS_SOFTCAP:
            t = 1.0 - 2.0 / (tl.exp(2.0 * z / SOFTCAP) + 1.0)
            z = SOFTCAP * t
        dz = (tl.exp(z - lse) - tl.where(cols == label, 1.0, 0.0)) * g
        if HAS_SOFTCAP:
            dz = dz * (1.0 - t * t)
        if HAS_SCALE:
            dz = dz * SCALE
        tl.store(row_ptr + cols, dz.to(logits_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------------------------------------------
def check_cross_entropy(logits, labels, ignore_index: int = IGNORE_INDEX, num_items=None, logit_scale=None,
                        softcap=None) -> None:
    """The checks both paths make: logits (N, V) floating, labels (N,) in range, positive num_items/scale/softcap."""
    check_float("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (tokens, vocab), got shape {tuple(logits.shape)}: "
                         "flatten with logits.view(-1, vocab)")
    check_labels(labels, logits.shape[0], logits.shape[1], logits.device, ignore_index, num_items)
    check_positive("logit_scale", logit_scale, optional=True)
    check_positive("softcap", softcap, optional=True)


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, num_items, logit_scale=None,
                  softcap=None) -> None:
    check_cross_entropy(logits, labels, ignore_index, num_items, logit_scale, softcap)
    check_tensor("logits", logits, contiguous=False)  # what only the kernel needs: dtype, device, layout
    if logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError(f"logits must have unit stride along the vocabulary (strides {logits.stride()}): "
                         "call .contiguous() first")
    if not labels.is_contiguous():
        raise ValueError("labels is not contiguous: call .contiguous() first")


def check_labels(labels, N: int, V: int, device, ignore_index: int, num_items) -> None:
    """labels (N,) int on `device`, each in [0, V) or ignore_index; num_items (a number or a one-element tensor)
    positive if given."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be an int64 or int32 tensor, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.shape != (N,):
        raise ValueError(f"labels has shape {tuple(labels.shape)} but there are {N} rows of logits: "
                         "pass one label per token (flatten with labels.view(-1))")
    if labels.device != device:
        raise ValueError(f"labels are on {labels.device} but logits on {device}: move them to one device")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    _check_num_items(num_items)
    if not host_checks(labels):  # reading values would wait for the GPU: see host_checks (the kernels give NaN)
        return
    bad = first_out_of_range(labels, V, ignore_index)
    if bad is not None:
        raise ValueError(f"labels must lie in [0, {V}) or equal ignore_index={ignore_index}; found "
                         f"{bad[1]} (vocabulary size {V})")


def first_out_of_range(ids: torch.Tensor, V: int, ignore_index: int | None = None) -> tuple[tuple, int] | None:
    """(position, value) of the first id outside [0, V) (``ignore_index`` allowed), or None. Reads values: call it
    on host tensors only."""
    bad = (ids < 0) | (ids >= V)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if not ids.numel() or not bool(bad.any()):
        return None
    position = tuple(int(i) for i in bad.nonzero()[0])
    return position, int(ids[position])


def _check_num_items(num_items) -> None:
    if num_items is None:
        return
    if isinstance(num_items, torch.Tensor):
        if num_items.numel() != 1 or num_items.dtype == torch.bool:
            raise ValueError(f"num_items must be a number or a one-element tensor, got shape "
                             f"{tuple(num_items.shape)} ({num_items.dtype})")
        if not host_checks(num_items):  # its value lives on the GPU: reading it would sync
            return
        value = num_items.item()
    else:
        value = num_items
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"num_items must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"num_items must be positive (the number of tokens that carry loss), got {value}")


def _constexprs(logit_scale, softcap) -> dict:
    return dict(SCALE=float(logit_scale) if logit_scale is not None else 1.0,
                SOFTCAP=float(softcap) if softcap is not None else 1.0,
                HAS_SCALE=logit_scale is not None, HAS_SOFTCAP=softcap is not None)


def _chunking(V: int) -> tuple[int, int, int]:
    """(CHUNK, n_chunks, BLOCK): rows up to 65536 are one chunk; the block is the tile loaded per loop step."""
    block = 1024 if interpreter_on() else FORWARD_BLOCK
    chunk = min(MAX_CHUNK, triton.next_power_of_2(V))
    block = min(block, chunk)
    return chunk, triton.cdiv(V, chunk), block


def _warps(block: int) -> int:
    return NUM_WARPS if block >= 2048 else 4


def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX, logit_scale=None, softcap=None):
    """Return (lse (N,) fp32, label_logit (N,) fp32): one read of the logits, nothing (N, V) allocated."""
    N, V = logits.shape
    CHUNK, n_chunks, BLOCK = _chunking(V)
    lse_parts = torch.empty(N, n_chunks, dtype=torch.float32, device=logits.device)
    label_logit = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N:
        _ce_forward_kernel[(N, n_chunks)](
            logits, logits.stride(0), labels, lse_parts, label_logit, V, ignore_index,
            **_constexprs(logit_scale, softcap), CHUNK=CHUNK, BLOCK=BLOCK, num_warps=_warps(BLOCK))
    # combine the chunks of a row: log(sum_k exp(lse_k)) — an (N, n_chunks) op, tiny next to (N, V)
    lse = lse_parts[:, 0] if n_chunks == 1 else torch.logsumexp(lse_parts, dim=1)
    return lse, label_logit


def cross_entropy_backward_(logits, labels, lse, grad_scale, ignore_index=IGNORE_INDEX, logit_scale=None, softcap=None):
    """Overwrite `logits` (N, V) with dL/dlogits, where grad_scale (1,) fp32 = upstream grad / num_items."""
    N, V = logits.shape
    BLOCK = 1024 if interpreter_on() else BACKWARD_BLOCK
    BLOCK = min(BLOCK, triton.next_power_of_2(max(V, 16)))
    if N:
        _ce_backward_kernel[(N, triton.cdiv(V, BLOCK))](
            logits, logits.stride(0), labels, lse, grad_scale, V, ignore_index,
            **_constexprs(logit_scale, softcap), BLOCK=BLOCK, num_warps=_warps(BLOCK))
    return logits


ROW_BLOCK, ROW_NUM_WARPS = 8192, 16  # launch shape of the one-launch kernel on a GPU


def cross_entropy_forward_backward_(logits, labels, grad_scale, ignore_index=IGNORE_INDEX, logit_scale=None, softcap=None):
    """One launch: return the per-row losses (N,) fp32 and overwrite `logits` with dL/dlogits (scaled by
    grad_scale (1,) fp32). For callers that know the upstream gradient is a plain scale (the fused linear + CE)."""
    N, V = logits.shape
    BLOCK = min(1024 if interpreter_on() else ROW_BLOCK, triton.next_power_of_2(max(V, 16)))
    losses = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N:
        _ce_row_forward_backward_kernel[(N,)](
            logits, logits.stride(0), labels, grad_scale, losses, V, ignore_index,
            **_constexprs(logit_scale, softcap), BLOCK=BLOCK, num_warps=ROW_NUM_WARPS if BLOCK >= 4096 else 4)
    return losses


def token_losses_sum(lse, label_logit, labels, ignore_index) -> torch.Tensor:
    """Σ over non-ignored rows of (lse − z_label): the summed negative log-likelihood, fp32 scalar."""
    return torch.where(labels != ignore_index, lse - label_logit, 0.0).sum()


def _count(labels, ignore_index, num_items):
    if num_items is None:
        return (labels != ignore_index).sum().clamp(min=1).to(torch.float32)
    return num_items


class CrossEntropyFunction(torch.autograd.Function):
    """loss = Σ_{i not ignored} (lse_i − z_{i, y_i}) / num_items; backward writes the gradient into the logits."""

    @staticmethod
    def forward(ctx, logits, labels, ignore_index, num_items, logit_scale, softcap, inplace_grad):
        lse, label_logit = cross_entropy_forward(logits, labels, ignore_index, logit_scale, softcap)
        count = _count(labels, ignore_index, num_items)
        loss = token_losses_sum(lse, label_logit, labels, ignore_index) / count
        # saved detached: the gradient returned in backward is then a tensor only autograd holds, which the
        # gradient accumulator of a leaf can adopt as .grad without copying it
        ctx.save_for_backward(logits.detach(), labels, lse)
        ctx.count, ctx.args, ctx.inplace = count, (ignore_index, logit_scale, softcap), inplace_grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, lse = ctx.saved_tensors
        grad_scale = (grad_loss.float() / ctx.count).reshape(1)  # stays on the device: no host sync
        # in place: the logits are dead after the loss, so their memory holds the gradient (no (N, V) allocation)
        target = logits if ctx.inplace else logits.clone()
        cross_entropy_backward_(target, labels, lse, grad_scale, *ctx.args)
        return target, None, None, None, None, None, None


def cross_entropy_fast(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                       num_items: int | float | torch.Tensor | None = None, logit_scale: float | None = None,
                       softcap: float | None = None, *, inplace_grad: bool = True) -> torch.Tensor:
    """Triton cross-entropy; same contract as `cross_entropy_reference`.

    With ``inplace_grad=True`` (default) backward overwrites ``logits`` with their gradient: don't read the logits
    after ``loss.backward()``. Pass ``inplace_grad=False`` when you still need them (one (N, V) buffer, same dtype).
    """
    _check_inputs(logits, labels, ignore_index, num_items, logit_scale, softcap)
    return CrossEntropyFunction.apply(logits, labels, ignore_index, num_items, logit_scale, softcap, inplace_grad)

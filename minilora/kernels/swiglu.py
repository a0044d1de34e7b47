"""SwiGLU and GeGLU gated activations: h = act(gate) * up.

Shapes: gate and up (..., intermediate). SwiGLU uses $\\mathrm{silu}(g) = g\\,\\sigma(g)$; GeGLU uses GELU (exact erf
form, or the tanh approximation).

The Triton version is one flat elementwise kernel per direction (the tensors are contiguous, so (..., I) is just a
1-D array of n = tokens * I numbers):

    forward   reads gate, up            writes h             3 n elements of traffic
    backward  reads dh, gate, up        writes dgate, dup    5 n elements of traffic

The backward does not keep act(gate) from the forward: it recomputes it from gate (cheap arithmetic beats storing
another n-element tensor), and it writes dgate and dup *into the gate and up buffers* — after the backward nothing
needs gate or up any more, so no new (tokens x intermediate) tensors are allocated.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import check_same, check_tensor, elementwise_launch, tl, triton
from .checks import check_float

GELU_APPROXIMATIONS = ("none", "tanh")


def check_glu(gate, up, approximate: str = "none") -> None:
    """The checks both paths make: gate and up floating, of one shape (no silent broadcasting), dtype and device."""
    check_float("gate", gate)
    check_float("up", up)
    check_same("gate and up", gate, up)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' (exact erf GELU) or 'tanh', got {approximate!r}")


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    check_glu(gate, up)
    return F.silu(gate) * up


def geglu_reference(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    check_glu(gate, up, approximate)
    return F.gelu(gate, approximate=approximate) * up


# Launch settings; None = the default heuristic. The benchmark script sweeps these on a GPU.
TUNING = {"block": None, "num_warps": None}


def _launch_config(n: int) -> tuple[int, int]:
    block, warps = elementwise_launch(n)
    if TUNING["block"] is not None:
        block = min(TUNING["block"], max(16, triton.next_power_of_2(n)))
    return block, TUNING["num_warps"] or warps


# Which activation a kernel applies (a tl.constexpr, so each variant compiles to straight-line code).
SILU, GELU_ERF, GELU_TANH = 0, 1, 2
ACTIVATIONS = {"silu": SILU, "none": GELU_ERF, "tanh": GELU_TANH}


@triton.jit
def _activation_and_slope(g, ACTIVATION: tl.constexpr):
    """act(g) and act'(g) in fp32 for one block of gate values."""
    if ACTIVATION == 0:
        # silu(g) = g σ(g);  silu'(g) = σ(g) (1 + g (1 − σ(g)))
        sig = tl.sigmoid(g)
        act = g * sig
        slope = sig * (1.0 + g * (1.0 - sig))
    elif ACTIVATION == 1:
        # gelu(g) = g Φ(g) with Φ(g) = ½(1 + erf(g/√2));  gelu'(g) = Φ(g) + g φ(g),  φ = standard normal pdf
        cdf = 0.5 * (1.0 + tl.erf(g * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * g * g)
        act = g * cdf
        slope = cdf + g * pdf
    else:
        # gelu_tanh(g) = ½ g (1 + tanh(u)),  u = √(2/π)(g + 0.044715 g³);  tanh(u) = 2σ(2u) − 1 (no tl.tanh needed)
        u = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
        act = 0.5 * g * (1.0 + t)
        du_dg = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * g * g)
        slope = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * du_dg
    return act, slope


@triton.jit
def _glu_forward_kernel(gate_ptr, up_ptr, h_ptr, n_elements, BLOCK: tl.constexpr, ACTIVATION: tl.constexpr):
    # Each program handles BLOCK consecutive elements of the flat (n_elements,) arrays.
    # 1. Which elements: int64 offsets so tensors past 2**31 elements address correctly.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    # 2. Load in the storage dtype, compute in fp32.
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    act, _ = _activation_and_slope(g, ACTIVATION)
    # 3. Cast on store.
    tl.store(h_ptr + offs, (act * u).to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _glu_backward_kernel(dh_ptr, gate_ptr, up_ptr, dgate_ptr, dup_ptr, n_elements, BLOCK: tl.constexpr,
                         ACTIVATION: tl.constexpr, STORE_DGATE: tl.constexpr, STORE_DUP: tl.constexpr):
    # dgate_ptr/dup_ptr may be gate_ptr/up_ptr themselves: each element is read before it is overwritten and no
    # two programs touch the same element, so writing the gradients in place is safe.
    # 1. Which elements.
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    # 2. Load dh, gate, up and recompute the activation (nothing was saved but gate and up).
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    act, slope = _activation_and_slope(g, ACTIVATION)
    # 3. h = act(g) u  ⇒  ∂h/∂u = act(g),  ∂h/∂g = u act'(g).
    if STORE_DUP:
        tl.store(dup_ptr + offs, (dh * act).to(dup_ptr.dtype.element_ty), mask=mask)
    if STORE_DGATE:
        tl.store(dgate_ptr + offs, (dh * u * slope).to(dgate_ptr.dtype.element_ty), mask=mask)


def _check_pair(gate: torch.Tensor, up: torch.Tensor) -> None:
    check_tensor("gate", gate)
    check_tensor("up", up)
    check_same("gate and up", gate, up)


def glu_forward(gate: torch.Tensor, up: torch.Tensor, activation: int = SILU) -> torch.Tensor:
    """h = act(gate) * up with one launch; gate, up contiguous and of one shape and dtype."""
    _check_pair(gate, up)
    h = torch.empty_like(gate)
    n = gate.numel()
    if n == 0:
        return h
    block, warps = _launch_config(n)
    _glu_forward_kernel[(triton.cdiv(n, block),)](gate, up, h, n, BLOCK=block, ACTIVATION=activation,
                                                  num_warps=warps)
    return h


def glu_backward(dh: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: int = SILU, *,
                 inplace: bool = True, need_dgate: bool = True, need_dup: bool = True):
    """(dgate, dup) from dh. With inplace=True they are written into gate's and up's memory (and returned)."""
    dh = dh.contiguous()
    check_same("dh and gate", dh, gate)
    n = gate.numel()
    dgate = gate if inplace else torch.empty_like(gate)
    dup = up if inplace else torch.empty_like(up)
    if n > 0:
        block, warps = _launch_config(n)
        _glu_backward_kernel[(triton.cdiv(n, block),)](dh, gate, up, dgate, dup, n, BLOCK=block,
                                                       ACTIVATION=activation, STORE_DGATE=need_dgate,
                                                       STORE_DUP=need_dup, num_warps=warps)
    return (dgate if need_dgate else None), (dup if need_dup else None)


class GLUFunction(torch.autograd.Function):
    """h = act(gate) * up with a hand-written backward that recomputes act and (by default) reuses gate/up."""

    @staticmethod
    def forward(ctx, gate, up, activation: int, inplace_backward: bool):
        h = glu_forward(gate, up, activation)
        ctx.save_for_backward(gate, up)
        ctx.activation, ctx.inplace = activation, inplace_backward
        return h

    @staticmethod
    def backward(ctx, dh):
        gate, up = ctx.saved_tensors
        dgate, dup = glu_backward(dh, gate, up, ctx.activation, inplace=ctx.inplace,
                                  need_dgate=ctx.needs_input_grad[0], need_dup=ctx.needs_input_grad[1])
        if ctx.inplace:
            # gate and up now hold gradients. Bump their version counters so that any *other* autograd node that
            # saved them fails loudly ("modified by an inplace operation") instead of using gradients as values.
            torch.autograd.graph.increment_version(gate)
            torch.autograd.graph.increment_version(up)
            # Hand autograd fresh views, not the saved tensors themselves: when an input is a leaf, AccumulateGrad can
            # then adopt the buffer as .grad instead of cloning it (a clone would cost a copy and an allocation).
            dgate = None if dgate is None else dgate.view(dgate.shape)
            dup = None if dup is None else dup.view(dup.shape)
        return dgate, dup, None, None


def _inplace_ok(gate: torch.Tensor, up: torch.Tensor, inplace_backward: bool | None) -> bool:
    """Default: reuse gate/up in the backward unless one of them is a leaf the caller owns (a parameter, a test
    input): overwriting those would silently change the caller's data."""
    if inplace_backward is None:
        return not (gate.is_leaf or up.is_leaf)
    return bool(inplace_backward)


def swiglu_fast(gate: torch.Tensor, up: torch.Tensor, inplace_backward: bool | None = None) -> torch.Tensor:
    """Triton SwiGLU: silu(gate) * up. gate/up contiguous, same shape, fp32/fp16/bf16.

    The backward writes dgate/dup into gate's and up's memory (no new tensors) unless `inplace_backward=False`;
    the default (None) does so whenever neither input is a leaf tensor.
    """
    check_glu(gate, up)
    return GLUFunction.apply(gate, up, SILU, _inplace_ok(gate, up, inplace_backward))


def geglu_fast(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none",
               inplace_backward: bool | None = None) -> torch.Tensor:
    """Triton GeGLU: gelu(gate, approximate) * up, approximate "none" (exact erf) or "tanh"; see swiglu_fast."""
    check_glu(gate, up, approximate)
    return GLUFunction.apply(gate, up, ACTIVATIONS[approximate], _inplace_ok(gate, up, inplace_backward))

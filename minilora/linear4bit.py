"""Linear4bit: a frozen linear layer whose weight lives as NF4 codes and is dequantized just in time.

QLoRA's memory trick in one class. The weight (out, in) is stored as 4-bit codes + block scales (~4.13 bits a
parameter with double quantization instead of 16). Each forward rebuilds the dense weight, uses it for one matmul
and drops it. The backward needs the weight again for the input gradient

    dX = dY · W          (W is frozen: no dW is ever computed, so X need not be saved either)

and rebuilds it a second time rather than keeping the first copy alive between forward and backward: 16 bits
a parameter of activation-like memory avoided, at the price of one more dequantization (a fast, bandwidth-bound
kernel on the GPU). `_DequantMatmul` below is that custom autograd Function; it saves no tensor at all.

For LoRA on top, `minilora.lora.LoraLinear(Linear4bit(...))` works unchanged: `in_features`/`out_features` are
here, and `.weight` is the packed uint8 code tensor (like bitsandbytes' Params4bit), frozen.

`dense_weight(layer, dtype)` answers, once for the whole library, "what (out, in) weight does this frozen layer
compute with?" — for an nn.Linear its own, for a quantized layer (`QuantizedLinear`: Linear4bit here, Linear8bit in
`minilora.linear8bit`) the dequantized one. `replace_block_linears` is the one loop that swaps a model's block
linears for quantized ones (`quantize_model` here, `quantize_model_8bit` there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import dequantize_nf4
from .quant.blockwise import (
    NF4_BLOCKSIZE,
    DoubleQuantState,
    NF4State,
    check_blocksize,
    check_state,
    quantize_nf4,
)
from .quant.nf4 import shared_dynamic_map

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_STATE_NAMES = ("absmax", "absmax_codes", "absmax_scales", "absmax_offset")  # the quantization state's tensors


class _DequantMatmul(torch.autograd.Function):
    """y = x Wᵀ + b with W rebuilt from its NF4 state in forward AND backward (nothing saved for backward)."""

    @staticmethod
    def forward(ctx, x, bias, state: NF4State):
        W = dequantize_nf4(state, x.dtype)  # (out, in), lives only for this matmul
        ctx.state = state  # the quantized tensors: alive anyway as the layer's own weight
        ctx.has_bias = bias is not None
        return F.linear(x, W, bias)

    @staticmethod
    def backward(ctx, grad_out):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            W = dequantize_nf4(ctx.state, grad_out.dtype)  # dequantize again instead of keeping W since forward
            grad_x = grad_out @ W  # (..., out) @ (out, in) → (..., in)
        if ctx.has_bias and ctx.needs_input_grad[1]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_bias, None


class QuantizedLinear(nn.Module):
    """What a frozen quantized linear layer offers the rest of the library (LoRA, saving, inference, counting)."""
    in_features: int
    out_features: int

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (out, in) weight this layer computes with."""
        raise NotImplementedError(f"{type(self).__name__} must define dequantize(dtype): QuantizedLinear is the "
                                  "shared base of Linear4bit and Linear8bit, not a layer of its own")

    @torch.no_grad()
    def add_to_weight(self, delta: torch.Tensor) -> None:
        """W ← quantize(dequantize(W) + delta): how a LoRA update merges into a quantized base (lossy)."""
        if delta.shape != (self.out_features, self.in_features):
            raise ValueError(f"delta of shape {tuple(delta.shape)} does not match the weight "
                             f"({self.out_features}, {self.in_features})")
        self._requantize(self.dequantize(torch.float32) + delta.float())

    def _requantize(self, w: torch.Tensor) -> None:
        """Store the float32 dense weight w in this layer's format."""
        raise NotImplementedError(f"{type(self).__name__} must define _requantize(w) to store a merged weight")

    def num_weights(self) -> int:
        """How many weights the stored codes stand for: what a parameter count counts."""
        return self.in_features * self.out_features

    def _apply(self, fn, recurse=True):
        # model.half() / model.to(bfloat16) must not touch the float32 scales of the quantized state (the integer
        # codes are safe: dtype casts skip integer tensors). Floating buffers follow only the DEVICE of the cast.
        self.__dict__.pop("_state_cache", None)  # don't keep the old tensors alive through a cached state
        scales = {k: b for k, b in self._buffers.items() if b is not None and b.is_floating_point()}
        for k in scales:
            del self._buffers[k]
        try:
            super()._apply(fn, recurse)
        finally:
            for k, b in scales.items():
                target = fn(torch.empty(0, dtype=b.dtype, device=b.device)).device  # where the cast sends tensors
                self.register_buffer(k, b.to(target))
        return self


class Linear4bit(QuantizedLinear):
    """A frozen nn.Linear stored in NF4. Build one with `Linear4bit.from_linear(linear)`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, blocksize: int = NF4_BLOCKSIZE,
                 double_quant: bool = True, compute_dtype: torch.dtype | None = None, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        check_blocksize(blocksize)
        if compute_dtype is not None and compute_dtype not in _COMPUTE_DTYPES:
            raise TypeError(f"compute_dtype must be float32, float16, bfloat16 or None (use the input's dtype), "
                            f"got {compute_dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.blocksize, self.double_quant, self.compute_dtype = blocksize, double_quant, compute_dtype
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) \
            if bias else None
        self.weight: nn.Parameter  # set by _store
        self._store(quantize_nf4(torch.zeros(out_features, in_features, device=device, dtype=dtype), blocksize,
                                 double_quant))

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                    compute_dtype: torch.dtype | None = None) -> "Linear4bit":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Linear4bit.from_linear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        check_blocksize(blocksize)
        if compute_dtype is not None and compute_dtype not in _COMPUTE_DTYPES:
            raise TypeError(f"compute_dtype must be float32, float16, bfloat16 or None, got {compute_dtype}")
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.blocksize, layer.double_quant, layer.compute_dtype = blocksize, double_quant, compute_dtype
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        layer._store(quantize_nf4(w, blocksize, double_quant))
        return layer

    # --- the quantized state, kept as module tensors so .to(device) and state_dict see it ----------------------
    def _store(self, state: NF4State) -> None:
        check_state(state)
        self.__dict__.pop("_state_cache", None)
        if tuple(state.shape) != (self.out_features, self.in_features):
            raise ValueError(f"an NF4 state of shape {tuple(state.shape)} does not fit Linear4bit("
                             f"in={self.in_features}, out={self.out_features}): expected (out, in)")
        self.weight = nn.Parameter(state.codes, requires_grad=False)  # uint8 (out·in/2,)
        self.weight_dtype = state.dtype
        for name in _STATE_NAMES:
            self._buffers.pop(name, None)
            self._parameters.pop(name, None)
        self.__dict__["_byte_views"] = {}  # name -> (dtype, shape) while the state is stored as bytes
        if state.double_quant is None:
            self.register_buffer("absmax", state.absmax)
        else:
            dq = state.double_quant
            self.register_buffer("absmax_codes", dq.absmax_codes)
            self.register_buffer("absmax_scales", dq.scales)
            self.register_buffer("absmax_offset", dq.offset)
            self.double_quant_blocksize = dq.blocksize

    def store_as_bytes(self) -> "Linear4bit":
        """Keep every tensor of the quantization state as a frozen, flat uint8 nn.Parameter (the codes already are).

        For sharding (FSDP2's ``fully_shard``, see minilora/train/distributed.py): fully_shard splits PARAMETERS
        along dim 0 across ranks and all-gathers them before the module runs, but leaves BUFFERS whole on every
        rank, refuses 0-dim parameters, and its mixed-precision policy casts every floating-point parameter to
        ``param_dtype`` (bf16 keeps 8 significant bits of the float32 block scales: the weights would no longer
        be the ones quantized). As 1-D uint8 bytes, the absmax codes, the float32 scales and the float32 offset
        shard like the codes (each rank ~1/N), are never cast (casts skip integer tensors), and the full tensors
        are viewed back as float32 after the all-gather. Outputs and gradients are unchanged; call it on the
        model's layers before fully_shard.
        """
        for name in _STATE_NAMES:
            t = self._buffers.get(name)
            if t is None:
                continue
            del self._buffers[name]
            self._byte_views[name] = (t.dtype, tuple(t.shape))
            flat = t.detach().reshape(-1).contiguous().view(torch.uint8).clone()
            self.register_parameter(name, nn.Parameter(flat, requires_grad=False))
        self.__dict__.pop("_state_cache", None)
        return self

    def _state_tensor(self, name: str) -> torch.Tensor | None:
        t = self._parameters.get(name) if name in self._parameters else self._buffers.get(name)
        if t is None or name not in self._byte_views:
            return t
        dtype, shape = self._byte_views[name]
        return t.detach().view(dtype).reshape(shape)  # the full bytes again (all-gathered under FSDP)

    @property
    def quant_state(self) -> NF4State:
        # Built once and reused while the tensors it refers to are still the layer's own: this property runs
        # for every dequantization (3x per step), and assembling the state costs ~10 µs of Python each time.
        # The key holds the tensor objects themselves (compared with `is`) and their memory addresses, so a
        # replaced parameter or buffer, `weight.data = ...`, `.to(device)`, `_store` or a sharded layer's
        # all-gather into new memory all rebuild it.
        own = {**self._buffers, **self._parameters}
        key = tuple(own.get(n) for n in ("weight", *_STATE_NAMES))
        ptrs = tuple(t.data_ptr() if t is not None else 0 for t in key)
        cached = self.__dict__.get("_state_cache")
        if cached is not None:
            old_key, old_ptrs, fields, state = cached
            if all(a is b for a, b in zip(old_key, key)) and old_ptrs == ptrs and fields == self._state_fields():
                return state
        state = self._build_state()
        self.__dict__["_state_cache"] = (key, ptrs, self._state_fields(), state)
        return state

    def _state_fields(self) -> tuple:
        return (self.blocksize, self.weight_dtype, self.in_features, self.out_features,
                self.__dict__.get("double_quant_blocksize"))

    def _build_state(self) -> NF4State:
        shape = torch.Size((self.out_features, self.in_features))
        absmax = self._state_tensor("absmax")
        if absmax is not None:
            return NF4State(self.weight.data, absmax, self.blocksize, shape, self.weight_dtype)
        dq = DoubleQuantState(self._state_tensor("absmax_codes"), self._state_tensor("absmax_scales"),
                              self._state_tensor("absmax_offset"), self.double_quant_blocksize,
                              shared_dynamic_map(self.weight.device))
        return NF4State(self.weight.data, None, self.blocksize, shape, self.weight_dtype, dq)

    # --- use ---------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"Linear4bit needs a floating-point input, got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dimension is {x.shape[-1]}, but this layer takes {self.in_features}")
        in_dtype = x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _DequantMatmul.apply(x, bias, self.quant_state).to(in_dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense (out, in) weight this layer computes with."""
        return dequantize_nf4(self.quant_state, dtype)

    def _requantize(self, w: torch.Tensor) -> None:
        self._store(quantize_nf4(w.to(self.weight_dtype), self.blocksize, self.double_quant))

    def extra_repr(self) -> str:
        state = self.quant_state
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, double_quant={self.double_quant}, "
                f"bits_per_param={state.bits_per_param():.3f}")


def dense_weight(layer: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (out, in) weight a frozen linear layer computes with: an nn.Linear's own (cast to ``dtype`` if given;
    no copy when it already matches), a quantized layer's dequantized now (the caller drops it after use)."""
    if isinstance(layer, QuantizedLinear):
        return layer.dequantize(dtype)
    if isinstance(layer, nn.Linear):
        w = layer.weight
        return w if dtype is None or w.dtype == dtype else w.to(dtype)
    raise TypeError(f"dense_weight needs an nn.Linear or a Linear4bit / Linear8bit (a QuantizedLinear), got "
                    f"{type(layer).__name__}")


def is_quantized(layer: nn.Module) -> bool:
    return isinstance(layer, QuantizedLinear)


@torch.no_grad()
def quantize_model(model: nn.Module, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = True,
                   compute_dtype: torch.dtype | None = None, skip=("lm_head",)) -> nn.Module:
    """Replace every nn.Linear inside ``model.model.layers`` by a frozen NF4 `Linear4bit`, in place; returns model.

    Embeddings, norms and the head stay as they are (QLoRA quantizes the blocks' linear layers only). `skip` lists
    layer names (the last part, e.g. "down_proj", or a full dotted name) to leave in full precision.
    """
    check_blocksize(blocksize)
    return replace_block_linears(
        model, lambda linear: Linear4bit.from_linear(linear, blocksize, double_quant, compute_dtype), skip,
        "quantize_model")


def replace_block_linears(model: nn.Module, make, skip=("lm_head",), caller: str = "replace_block_linears"):
    """Replace every plain nn.Linear inside ``model.model.layers`` by ``make(linear)``, in place; returns model.
    `skip`: layer names (the last part, e.g. "down_proj", or a full dotted name) to leave as they are."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{caller} expects a causal LM with model.model.layers (a ModuleList of decoder "
                        f"blocks), got {type(model).__name__}")
    if any(name.endswith(("lora_A", "lora_B")) for name, _ in model.named_modules()):
        raise ValueError("this model already has LoRA adapters: quantize the base model first, then call "
                         "get_peft_model (QLoRA keeps the adapters in 16/32-bit)")
    skip = tuple(skip or ())
    for block_idx, block in enumerate(layers):
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"model.layers.{block_idx}.{name + '.' if name else ''}{child_name}"
                if type(child) is nn.Linear and child_name not in skip and full not in skip:
                    setattr(module, child_name, make(child))
    return model

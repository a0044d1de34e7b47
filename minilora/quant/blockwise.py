"""Blockwise NF4 quantization in plain PyTorch, byte for byte what bitsandbytes stores.

A weight W (any shape, numel n) is read flat, row-major, and cut into blocks of `blocksize` values (64 by default;
the last block may be shorter). Per block:

1. absmax = max |w| over the block (float32)                    — one number per block
2. w / absmax ∈ [-1, 1], then the index of the nearest NF4 level  — 4 bits per value
3. two indices per byte, the FIRST value in the HIGH nibble      — n/2 bytes (a zero index 7 pads an odd n)

Memory: 4 bits per value + 32 bits per block = 4 + 32/64 = 4.5 bits per parameter. **Double quantization** shrinks
the absmax side: subtract their mean, quantize the centred values to 8 bits with the dynamic map in groups of 256
(one float32 scale per group), so the overhead becomes 8/64 + 32/(64·256) ≈ 0.127 bits instead of 0.5.

The state objects below name every piece (like torchao's NF4Tensor): `NF4State` and its nested `DoubleQuantState`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .dynamic8 import blocks_absmax_and_scaled as _blocks_absmax_and_scaled
from .dynamic8 import (
    check_blocksize,
    dequantize_blockwise_8bit,
    dynamic_map_8bit,
    quantize_blockwise_8bit,
    shared_dynamic_map,
)
from .nf4 import NF4_CODEBOOK, NF4_ZERO_CODE, nf4_midpoints

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NF4_BLOCKSIZE = 64  # weights per absmax: QLoRA's default, and transformers' bnb_4bit_blocksize
DOUBLE_QUANT_BLOCKSIZE = 256  # absmax values per 8-bit group, as bitsandbytes' compress_statistics
_TINY = 1e-38  # guards the relative error of an all-zero tensor


# --- the state objects --------------------------------------------------------------------------------------------
@dataclass
class DoubleQuantState:
    """The per-block absmax values, themselves quantized to 8 bits.

    absmax ≈ code[absmax_codes] · scales[block // blocksize] + offset
    """
    absmax_codes: torch.Tensor  # uint8 (n_blocks,): index into `code` per NF4 block
    scales: torch.Tensor  # float32 (ceil(n_blocks / blocksize),): max |absmax − offset| per group
    offset: torch.Tensor  # float32 scalar: the mean absmax, subtracted first so the values straddle 0
    blocksize: int = DOUBLE_QUANT_BLOCKSIZE
    code: torch.Tensor = field(default_factory=dynamic_map_8bit)  # float32 (256,): the 8-bit dynamic map

    def dequantize(self) -> torch.Tensor:
        """The float32 absmax values (n_blocks,)."""
        centred = dequantize_blockwise_8bit(self.absmax_codes, self.scales, self.code, self.blocksize)
        return centred + self.offset

    @property
    def nbytes(self) -> int:
        return _nbytes(self.absmax_codes, self.scales, self.offset)  # the 1 KiB shared map is not per weight


@dataclass
class NF4State:
    """Everything needed to rebuild a weight from its 4-bit codes."""
    codes: torch.Tensor  # uint8 (ceil(numel / 2),): two NF4 indices per byte, first in the high nibble
    absmax: torch.Tensor | None  # float32 (n_blocks,): per-block scale; None when double-quantized
    blocksize: int  # values per block (a power of two)
    shape: torch.Size  # shape of the original tensor
    dtype: torch.dtype  # dtype of the original tensor (the default dequantization dtype)
    double_quant: DoubleQuantState | None = None  # the quantized absmax, when double quantization is on

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def n_blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def block_absmax(self) -> torch.Tensor:
        """float32 (n_blocks,) scales, undoing double quantization if it was used."""
        return self.double_quant.dequantize() if self.double_quant is not None else self.absmax

    @property
    def nbytes(self) -> int:
        """Bytes this state holds: codes + absmax (or its 8-bit codes, group scales and offset)."""
        extra = self.double_quant.nbytes if self.double_quant is not None else _nbytes(self.absmax)
        return _nbytes(self.codes) + extra

    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel

    def to(self, device) -> "NF4State":
        dq = self.double_quant
        if dq is not None:
            dq = DoubleQuantState(dq.absmax_codes.to(device), dq.scales.to(device), dq.offset.to(device),
                                  dq.blocksize, dq.code.to(device))
        absmax = None if self.absmax is None else self.absmax.to(device)
        return NF4State(self.codes.to(device), absmax, self.blocksize, self.shape, self.dtype, dq)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# --- checks --------------------------------------------------------------------------------------------------------
def _check_float_tensor(x, what: str = "tensor") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} has dtype {x.dtype}, but NF4 quantizes floating-point weights: convert it with "
                        f".float() (or .half()/.bfloat16()) first")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what} has dtype {x.dtype}; NF4 supports float32, float16 and bfloat16: convert it with "
                        f".float() first")
    if x.is_meta:
        raise ValueError(f"{what} is on the meta device (a shape without values): load or materialize the weights "
                         "first (e.g. FastLanguageModel.from_pretrained, or model.to_empty(device=...) and then "
                         "load a state dict), then quantize")
    if x.numel() == 0:
        raise ValueError(f"{what} is empty: there is nothing to quantize")


def check_state(state: NF4State) -> None:
    """Raise a clear error when the parts of a state do not fit each other (e.g. codes of another weight)."""
    if not isinstance(state, NF4State):
        raise TypeError(f"expected an NF4State, got {type(state).__name__}")
    check_blocksize(state.blocksize)
    if state.codes.dtype != torch.uint8 or state.codes.dim() != 1:
        raise ValueError(f"NF4State.codes must be a 1-D uint8 tensor, got {state.codes.dtype} "
                         f"{tuple(state.codes.shape)}")
    want_bytes = -(-state.numel // 2)
    if state.codes.numel() != want_bytes:
        raise ValueError(f"NF4State.codes holds {state.codes.numel()} bytes but shape {tuple(state.shape)} needs "
                         f"{want_bytes} (two values per byte): the codes belong to another tensor")
    if (state.absmax is None) == (state.double_quant is None):
        raise ValueError("NF4State needs exactly one of absmax (plain) or double_quant (compressed absmax)")
    if state.absmax is not None:
        if state.absmax.dtype != torch.float32 or state.absmax.numel() != state.n_blocks:
            raise ValueError(f"NF4State.absmax must be float32 with {state.n_blocks} values (one per block of "
                             f"{state.blocksize}), got {state.absmax.dtype} with {state.absmax.numel()}")
    else:
        dq = state.double_quant
        groups = -(-state.n_blocks // dq.blocksize)
        if dq.absmax_codes.dtype != torch.uint8 or dq.absmax_codes.numel() != state.n_blocks:
            raise ValueError(f"double-quant absmax_codes must be uint8 with {state.n_blocks} values, got "
                             f"{dq.absmax_codes.dtype} with {dq.absmax_codes.numel()}")
        if dq.scales.numel() != groups or dq.code.numel() != 256:
            raise ValueError(f"double-quant state needs {groups} group scales and a 256-entry code, got "
                             f"{dq.scales.numel()} and {dq.code.numel()}")
    if state.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"NF4State.dtype {state.dtype} is not one of float32/float16/bfloat16")


# --- nibble packing -------------------------------------------------------------------------------------------------
def pack_nibbles(indices: torch.Tensor) -> torch.Tensor:
    """uint8 indices in [0, 16) (n,) → bytes (ceil(n/2),); element 2i in the high nibble, 2i+1 in the low one."""
    if indices.dtype != torch.uint8:
        raise TypeError(f"indices must be uint8, got {indices.dtype}")
    flat = indices.reshape(-1)
    if flat.numel() % 2:  # odd count: pad with the code of 0.0, as bitsandbytes does
        flat = torch.cat([flat, flat.new_full((1,), NF4_ZERO_CODE)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_nibbles(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_nibbles: bytes → the first n uint8 indices."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed codes must be uint8, got {packed.dtype}")
    flat = packed.reshape(-1)
    if not 2 * flat.numel() - 1 <= n <= 2 * flat.numel():
        raise ValueError(f"{flat.numel()} bytes hold {2 * flat.numel() - 1} or {2 * flat.numel()} values, not {n}")
    both = torch.stack([flat >> 4, flat & 0xF], dim=1)  # (bytes, 2): high nibble first
    return both.reshape(-1)[:n]


# --- NF4 ------------------------------------------------------------------------------------------------------------
def quantize_nf4(x: torch.Tensor, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = False) -> NF4State:
    """Quantize a float tensor to NF4 in blocks of `blocksize` values (flat, row-major)."""
    _check_float_tensor(x, "the tensor to quantize")
    check_blocksize(blocksize)
    flat = x.detach().reshape(-1).float()  # fp16 / bf16 → fp32 is exact
    absmax, scaled = _blocks_absmax_and_scaled(flat, blocksize)
    if not torch.isfinite(absmax).all():  # amax propagates NaN and inf: checking n/64 values covers all n
        raise ValueError("the tensor to quantize contains NaN or inf: a block's absmax would be meaningless")
    # nearest level = how many midpoints lie strictly below the value (a tie goes to the lower level)
    indices = torch.bucketize(scaled, nf4_midpoints().to(flat.device), out_int32=True)  # (n,) in [0, 16)
    codes = pack_nibbles(indices.to(torch.uint8))
    if double_quant:
        return NF4State(codes, None, blocksize, x.shape, x.dtype, double_quantize_absmax(absmax))
    return NF4State(codes, absmax, blocksize, x.shape, x.dtype)


_CODEBOOKS: dict[torch.device, torch.Tensor] = {}


def codebook_on(device: torch.device) -> torch.Tensor:
    """The 16 levels on `device`, copied once: a host-to-GPU copy per call would make the CPU wait for the GPU."""
    if device not in _CODEBOOKS:
        _CODEBOOKS[device] = NF4_CODEBOOK.to(device)
    return _CODEBOOKS[device]


def dequantize_nf4_reference(state: NF4State, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Plain-PyTorch dequantization: level[index] · absmax of its block, computed in float32, cast at the end."""
    check_state(state)
    dtype = state.dtype if dtype is None else dtype
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dequantize to float32, float16 or bfloat16, not {dtype}")
    n, bs = state.numel, state.blocksize
    values = codebook_on(state.device)[unpack_nibbles(state.codes, n).long()]  # (n,) in [-1, 1]
    absmax = state.block_absmax()
    values = torch.nn.functional.pad(values, (0, state.n_blocks * bs - n)).view(-1, bs) * absmax.unsqueeze(1)
    return values.reshape(-1)[:n].to(dtype).reshape(state.shape)


# --- 8-bit blockwise (for the absmax values): see dynamic8.py -----------------------------------------------------
def double_quantize_absmax(absmax: torch.Tensor, blocksize: int = DOUBLE_QUANT_BLOCKSIZE) -> DoubleQuantState:
    """Centre the absmax values on their mean, then store them as 8-bit dynamic codes in groups of `blocksize`."""
    offset = absmax.mean()  # absmax > 0 always; centring puts them around 0, where the dynamic map is densest
    code = shared_dynamic_map(absmax.device)
    idx, scales = quantize_blockwise_8bit(absmax - offset, code, blocksize)
    return DoubleQuantState(idx, scales, offset, blocksize, code)


def quantization_error(x: torch.Tensor, blocksize: int = NF4_BLOCKSIZE, double_quant: bool = False) -> dict:
    """Round-trip error of NF4 on x: mean absolute, max absolute, and relative RMS (all float)."""
    back = dequantize_nf4_reference(quantize_nf4(x, blocksize, double_quant), torch.float32)
    err = back - x.float()
    return {"mean_abs": err.abs().mean().item(), "max_abs": err.abs().max().item(),
            "rel_rms": (err.pow(2).mean().sqrt() / x.float().pow(2).mean().sqrt().clamp(min=_TINY)).item()}

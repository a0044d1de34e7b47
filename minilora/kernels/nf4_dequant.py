"""NF4 → float dequantization: the plain-PyTorch reference and one Triton kernel.

Why a kernel: QLoRA dequantizes every frozen weight just in time, in every forward AND every backward, so this
op runs 2-3x per linear layer per step. It is pure data movement:

    read   n/2 bytes of codes + n/64 absmax (4 bytes, or 1 byte + a share of a group scale when double-quantized)
    write  n · 2 bytes (bf16)

so its speed is bytes / time against the card's bandwidth. The reference (`dequantize_nf4_reference`) makes
several full passes (unpack, gather, pad, multiply, cast), each writing n values in float32; the kernel reads each
byte once and writes each output once.

Kernel layout (1-D, plain pointer arithmetic with masks, which Triton 3.6 on the GPU and the 3.9 interpreter share):

    codes      uint8   (n_bytes,)          byte i holds values 2i (high nibble) and 2i+1 (low nibble)
    absmax     float32 (n_blocks,)         or, double-quantized: absmax_codes uint8 (n_blocks,),
                                           scales float32 (n_blocks / 256,), offset float32 (1,), code2 (256,)
    out        dtype   (n,)                row-major, the original tensor's element order

Each program handles a tile of whole blocks: (blocks, blocksize/2) bytes → (blocks, blocksize) outputs, one scale
per block row. A block size is even, so both values of a byte share one block and one absmax.
"""
from __future__ import annotations

import torch

from ..quant.blockwise import SUPPORTED_DTYPES, NF4State, check_state, codebook_on
from ..quant.nf4 import NF4_CODEBOOK
from ._triton import require_triton, tl, triton

__all__ = ["LOOKUP_GATHER", "LOOKUP_PAIR", "LOOKUP_SELECT", "dequantize_nf4_triton"]


# How a 4-bit index becomes its NF4 level inside the kernel (measured against each other in bench_nf4.py):
LOOKUP_GATHER = 0  # two loads from the 16-entry table (it stays in L1)
LOOKUP_PAIR = 1  # one load of (level_hi, level_lo) from a 256×2 table indexed by the whole byte
LOOKUP_SELECT = 2  # no memory: a 4-level binary tree of selects over the 16 constants
# Fastest measured on an H200 for a 14336×4096 weight to bf16 (benchmarks/results/nf4-dequant-h200-2026-11-29.json,
# medians): 2.68 TB/s plain (bitsandbytes 2.28), 2.45 TB/s double-quantized (bitsandbytes 1.97), against a device
# copy of the same bytes at 3.86 and 3.61 TB/s; DEFAULT_TILE holds the tiles and warps of those runs.
DEFAULT_LOOKUP = LOOKUP_GATHER
DEFAULT_TILE = {False: (2048, 4), True: (4096, 8)}  # double_quant → (tile bytes, warps)


@triton.jit
def _nf4_level(c):
    """NF4 level of index c (int32 in [0, 16)) as a tree of selects on its bits: the published table, in order."""
    b0, b1, b2, b3 = (c & 1) != 0, (c & 2) != 0, (c & 4) != 0, (c & 8) != 0
    l0 = tl.where(b0, -0.6961928009986877, -1.0)
    l1 = tl.where(b0, -0.39491748809814453, -0.5250730514526367)
    l2 = tl.where(b0, -0.18477343022823334, -0.28444138169288635)
    l3 = tl.where(b0, 0.0, -0.09105003625154495)
    l4 = tl.where(b0, 0.16093020141124725, 0.07958029955625534)
    l5 = tl.where(b0, 0.33791524171829224, 0.24611230194568634)
    l6 = tl.where(b0, 0.5626170039176941, 0.44070982933044434)
    l7 = tl.where(b0, 1.0, 0.7229568362236023)
    m0, m1, m2, m3 = tl.where(b1, l1, l0), tl.where(b1, l3, l2), tl.where(b1, l5, l4), tl.where(b1, l7, l6)
    return tl.where(b3, tl.where(b2, m3, m2), tl.where(b2, m1, m0)).to(tl.float32)


@triton.jit
def _nf4_dequant_kernel(codes_ptr, absmax_ptr, absmax_codes_ptr, scales_ptr, offset_ptr, code2_ptr, lut_ptr,
                        pair_lut_ptr, out_ptr, n_bytes, n_out, n_blocks,
                        HALF_BLOCK: tl.constexpr, BLOCKS_PER_PROG: tl.constexpr, DQ_BLOCK: tl.constexpr,
                        DOUBLE_QUANT: tl.constexpr, LOOKUP: tl.constexpr):
    # A tile is BLOCKS_PER_PROG quantization blocks × HALF_BLOCK bytes (= blocksize values) each: contiguous
    # memory, and one scale per row of the tile instead of one scale lookup per value.
    pid = tl.program_id(0)
    # 1. which blocks, which bytes (int64: a 70B model's largest weight has > 2^31 values)
    rows = pid.to(tl.int64) * BLOCKS_PER_PROG + tl.arange(0, BLOCKS_PER_PROG)  # (R,) block ids
    row_ok = rows < n_blocks
    byte_idx = rows[:, None] * HALF_BLOCK + tl.arange(0, HALF_BLOCK)[None, :]  # (R, H)
    packed = tl.load(codes_ptr + byte_idx, mask=byte_idx < n_bytes, other=0).to(tl.int32)
    # 2. one scale per block, undoing double quantization if it was used
    if DOUBLE_QUANT:
        q = tl.load(absmax_codes_ptr + rows, mask=row_ok, other=0).to(tl.int32)
        group_scale = tl.load(scales_ptr + rows // DQ_BLOCK, mask=row_ok, other=0.0)
        scale = tl.load(code2_ptr + q) * group_scale + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + rows, mask=row_ok, other=0.0)  # (R,)
    # 3. the two levels of each byte (first value in the high nibble), as (R, H, 2) in element order
    if LOOKUP == 1:
        pair = tl.load(pair_lut_ptr + packed[:, :, None] * 2 + tl.arange(0, 2)[None, None, :])
    elif LOOKUP == 2:
        pair = tl.join(_nf4_level(packed >> 4), _nf4_level(packed & 0xF))
    else:
        pair = tl.join(tl.load(lut_ptr + (packed >> 4)), tl.load(lut_ptr + (packed & 0xF)))
    # 4. scale in float32, flatten each block back to its 2·H values, cast on store
    values = tl.reshape(pair * scale[:, None, None], (BLOCKS_PER_PROG, 2 * HALF_BLOCK))
    out_idx = rows[:, None] * (2 * HALF_BLOCK) + tl.arange(0, 2 * HALF_BLOCK)[None, :]
    tl.store(out_ptr + out_idx, values.to(out_ptr.dtype.element_ty), mask=out_idx < n_out)


_PAIR_LUT: dict = {}


def _pair_lut(device) -> torch.Tensor:
    """(256, 2) float32: for every byte, the levels of its high and low nibble."""
    key = str(device)
    if key not in _PAIR_LUT:
        byte = torch.arange(256)
        _PAIR_LUT[key] = torch.stack([NF4_CODEBOOK[byte >> 4], NF4_CODEBOOK[byte & 0xF]], dim=1).to(device)
    return _PAIR_LUT[key]


def dequantize_nf4_triton(state: NF4State, dtype: torch.dtype | None = None, *,
                          tile_bytes: int | None = None, num_warps: int | None = None,
                          lookup: int = DEFAULT_LOOKUP) -> torch.Tensor:
    """Dequantize with the Triton kernel (compiled on CUDA, or the interpreter under TRITON_INTERPRET=1).

    tile_bytes: packed bytes per program (a power of two; at least one block); lookup: LOOKUP_GATHER / _PAIR /
    _SELECT. The defaults (None) are the fastest measured on an H200 (benchmarks/results/nf4-dequant-*.json).
    """
    require_triton()
    check_state(state)
    dtype = state.dtype if dtype is None else dtype
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dequantize to float32, float16 or bfloat16, not {dtype}")
    if lookup not in (LOOKUP_GATHER, LOOKUP_PAIR, LOOKUP_SELECT):
        raise ValueError(f"lookup must be LOOKUP_GATHER (0), LOOKUP_PAIR (1) or LOOKUP_SELECT (2), got {lookup!r}")
    device = state.device
    n, n_bytes, half = state.numel, state.codes.numel(), state.blocksize // 2
    out = torch.empty(n, dtype=dtype, device=device)
    dq = state.double_quant
    if dq is not None:
        absmax, absmax_codes, scales, offset, code2 = dq.scales, dq.absmax_codes, dq.scales, dq.offset, dq.code
        dq_block = dq.blocksize
    else:  # the double-quant arguments are unused: any tensor will do
        absmax, absmax_codes, scales, offset, code2, dq_block = (state.absmax, state.codes, state.absmax,
                                                                 state.absmax, state.absmax, 1)
    default_tile, default_warps = DEFAULT_TILE[dq is not None]
    tile_bytes, num_warps = tile_bytes or default_tile, num_warps or default_warps
    blocks_per_prog = max(1, tile_bytes // half)
    grid = (triton.cdiv(state.n_blocks, blocks_per_prog),)
    _nf4_dequant_kernel[grid](state.codes, absmax, absmax_codes, scales,
                              offset if offset.dim() == 1 else offset.reshape(-1), code2,
                              codebook_on(device), _pair_lut(device), out, n_bytes, n, state.n_blocks,
                              HALF_BLOCK=half, BLOCKS_PER_PROG=blocks_per_prog, DQ_BLOCK=dq_block,
                              DOUBLE_QUANT=dq is not None, LOOKUP=lookup, num_warps=num_warps)
    return out.view(state.shape)

"""Blockwise 8-bit dynamic quantization: the format of 8-bit optimizer states (and of NF4's double-quantized absmax).

**The dynamic map** (Dettmers, "8-bit approximations for parallelism in deep learning", 2015) spends its 256 levels
like a floating-point type: each decade 10^-6 … 10^0 of magnitudes gets its own levels, and larger decades get more
of them. Within decade i the interval [0.1, 1] is cut into equal bins and the bin centres, times 10^(i-6), are the
levels. The signed map has 2^i bins in decade i (and the same levels negated), the unsigned one 2^(i+1) (no sign to
store, so one more fraction bit). Both add an exact 0 and 1.0: 256 sorted values spanning [-1, 1] or [0, 1].

**Blockwise**: cut the tensor (flat, row-major) into blocks of `blocksize` values (256 for Adam's states, 2048 or
4096 elsewhere); per block store absmax = max |x| in float32 and, per value, the index of the level nearest to
x / absmax (one byte). Dequantizing is one table look-up and one multiply: level[index] · absmax of its block.
Bytes: 1 per value + 4 per block (1 + 4/256 = 1.016 bytes a value at block 256).

**Rounding.** `rounding="nearest"` picks the nearest level (a tie goes to the lower one). `rounding="grid"` is what
bitsandbytes' CPU kernel does (0.50): it first rounds x / absmax to one of 65,536 evenly spaced points of [-1, 1] and
takes the level nearest to that point (a 64 Ki-entry look-up table). The grid step is 2/65535 ≈ 3.1e-5, coarser
than the smallest levels (5.5e-7 …), so values far below a block's absmax (|x| < ~1.5e-5·absmax, exact zeros
included) land on a level near 2e-5 instead of their own. Per value the grid costs at most 2/65535 · absmax of
extra error: |level_grid − x| ≤ |level_nearest − x| + 2·(1/65535)·absmax.
"""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GRID_POINTS = 65536  # bitsandbytes' CPU look-up table: 2^16 evenly spaced points of [-1, 1]
ROUNDINGS = ("nearest", "grid")
_TINY = 1e-38  # floor for the reciprocal of an all-zero block's absmax (0 · 1e38 = 0: zeros stay zeros)


# --- the maps -------------------------------------------------------------------------------------------------------
def dynamic_map(signed: bool = True, max_exponent_bits: int = 7) -> torch.Tensor:
    """The 256 levels of the 8-bit dynamic data type, sorted, float32 (signed: [-1, 1]; unsigned: [0, 1])."""
    if not isinstance(max_exponent_bits, int) or not 1 <= max_exponent_bits <= 7:
        raise ValueError(f"max_exponent_bits must be an integer in 1..7 (7 = the map bitsandbytes uses), got "
                         f"{max_exponent_bits!r}")
    values: list[float] = []
    for i in range(max_exponent_bits):
        n_bins = 2 ** (i + (0 if signed else 1))  # the sign bit, when unsigned, becomes one more fraction bit
        edges = torch.linspace(0.1, 1, n_bins + 1, dtype=torch.float32)
        centres = (edges[:-1] + edges[1:]) / 2.0
        scale = 10 ** (i - (max_exponent_bits - 1))  # decade i: 10^-6 … 10^0 for the default 7 exponent bits
        values += (scale * centres).tolist()
        if signed:
            values += (-scale * centres).tolist()
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))  # unused slots (none for the default 7 exponent bits)
    return torch.tensor(sorted(values), dtype=torch.float32)


def dynamic_map_8bit(max_exponent_bits: int = 7) -> torch.Tensor:
    """The signed dynamic map (the name NF4's double quantization has always used)."""
    return dynamic_map(True, max_exponent_bits)


_MAP_CACHE: dict = {}


def shared_dynamic_map(device, signed: bool = True) -> torch.Tensor:
    """One read-only copy of a map per device, shared by every quantized tensor (1 KiB, not 1 KiB each)."""
    key = (str(torch.device(device)), signed)
    if key not in _MAP_CACHE:
        _MAP_CACHE[key] = dynamic_map(signed).to(device)
    return _MAP_CACHE[key]


# bitsandbytes' blockwise 8-bit optimizers, and minilora's AdamW8bit: 256 values a block, and a tensor of fewer
# than 4096 values keeps float32 states (8 bits would save little there: biases and norms). The optimizer and the
# memory estimates both read these two.
OPTIMIZER_BLOCKSIZE, MIN_8BIT_SIZE = 256, 4096


# --- checks ---------------------------------------------------------------------------------------------------------
def check_blocksize(blocksize) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2 or blocksize & (blocksize - 1):
        raise ValueError(f"blocksize must be a power of two ≥ 2 (e.g. 64, as QLoRA uses), got {blocksize!r}")
    return blocksize


def _check_code(code: torch.Tensor) -> None:
    if not isinstance(code, torch.Tensor) or code.dtype != torch.float32 or code.shape != (256,):
        raise ValueError("code must be a float32 tensor of 256 sorted levels, e.g. dynamic_map(signed=True)")


# --- blockwise ------------------------------------------------------------------------------------------------------
def blocks_absmax_and_scaled(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """flat float32 (n,) → absmax (n_blocks,) and flat / its block's absmax (in [-1, 1] up to rounding)."""
    n = flat.numel()
    n_blocks = -(-n // blocksize)
    # a short last block is padded with zeros, which never raise an absmax
    padded = flat if n % blocksize == 0 else torch.nn.functional.pad(flat, (0, n_blocks * blocksize - n))
    blocks = padded.view(n_blocks, blocksize)  # (n_blocks, blocksize)
    # no |x| copy; amax + amin rather than aminmax, whose CPU kernel took 20 ms on a (4, 256) input on a busy
    # 2-core machine (torch 2.13) against 4 µs for these two
    absmax = torch.maximum(blocks.amax(dim=1), -blocks.amin(dim=1))  # (n_blocks,)
    # multiply by the reciprocal (as bitsandbytes' kernels do), so the boundaries fall in exactly the same place
    # (no clamp to [-1, 1] needed: a value one rounding step past ±1 still falls beyond the outermost midpoint)
    scaled = blocks * (1.0 / absmax.clamp(min=_TINY)).unsqueeze(1)
    return absmax, scaled.reshape(-1)[:n]


def midpoints(code: torch.Tensor) -> torch.Tensor:
    """The 255 decision boundaries between neighbouring levels (float32, as the kernels compute them)."""
    return (code[:-1] + code[1:]) / 2


_GRID_TABLES: dict = {}


def grid_table(code: torch.Tensor) -> torch.Tensor:
    """For each of the 65,536 grid points of [-1, 1], the index of its nearest level (bitsandbytes' CPU table)."""
    key = (code.device, tuple(code.tolist()))
    if key not in _GRID_TABLES:
        k = torch.arange(GRID_POINTS, dtype=torch.float32, device=code.device)
        points = (2.0 * k) / (GRID_POINTS - 1) - 1.0  # float32, in the order the table is built
        _GRID_TABLES[key] = torch.bucketize(points, midpoints(code)).to(torch.uint8)
    return _GRID_TABLES[key]


def quantize_blockwise_8bit(x: torch.Tensor, code: torch.Tensor | None = None, blocksize: int = 256,
                            rounding: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """Float tensor → uint8 level indices (x's shape) and float32 block absmax (ceil(numel / blocksize),).

    `code` is the sorted 256-level map (default: the signed dynamic map). An all-zero block stores absmax 0 and
    index 0 (any index decodes to 0 there; 0 is what bitsandbytes writes).
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"quantize_blockwise_8bit needs a float32/float16/bfloat16 tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.numel() == 0:
        raise ValueError("the tensor to quantize is empty: there is nothing to quantize")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}: choose 'nearest' (exact) or 'grid' (bitsandbytes' CPU kernel)")
    check_blocksize(blocksize)
    code = shared_dynamic_map(x.device) if code is None else code
    _check_code(code)
    absmax, scaled = blocks_absmax_and_scaled(x.detach().reshape(-1).float(), blocksize)  # fp16/bf16 → fp32 exact
    if not torch.isfinite(absmax).all():  # amax propagates NaN and inf: checking the blocks covers every value
        raise ValueError("the tensor to quantize contains NaN or inf: a block's absmax would be meaningless")
    if rounding == "nearest":
        # nearest level = how many midpoints lie strictly below the value (a tie goes to the lower level)
        idx = torch.bucketize(scaled, midpoints(code)).to(torch.uint8)
    else:
        # the grid point: (v + 1)/2 · 65535, rounded half up (float32 arithmetic, truncated as the C cast does)
        point = ((scaled.clamp(-1.0, 1.0) + 1.0) * 0.5 * (GRID_POINTS - 1) + 0.5).to(torch.int64)
        idx = grid_table(code)[point]
    zero_blocks = (absmax == 0).repeat_interleave(blocksize)[: idx.numel()]
    idx = idx.masked_fill(zero_blocks, 0)
    return idx.reshape(x.shape), absmax


def dequantize_blockwise_8bit(idx: torch.Tensor, scales: torch.Tensor, code: torch.Tensor | None = None,
                              blocksize: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """level[index] · absmax of its block, computed in float32, cast to `dtype`; idx's shape."""
    if idx.dtype != torch.uint8:
        raise TypeError(f"8-bit codes must be uint8, got {idx.dtype}")
    n = idx.numel()
    if scales.numel() != -(-n // blocksize):
        raise ValueError(f"{n} codes in blocks of {blocksize} need {-(-n // blocksize)} scales, got "
                         f"{scales.numel()}: the scales belong to another tensor or block size")
    code = shared_dynamic_map(idx.device) if code is None else code
    values = code[idx.reshape(-1).long()]
    values = torch.nn.functional.pad(values, (0, scales.numel() * blocksize - n)).view(-1, blocksize)
    return (values * scales.float().unsqueeze(1)).reshape(-1)[:n].to(dtype).reshape(idx.shape)

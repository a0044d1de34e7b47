"""NF4 and 8-bit quantization: the pure formats, from scratch — tensors in, tensors out, no modules.

- `nf4`: the 16 levels, derived from N(0, 1) quantiles (and the published table the bytes use);
- `blockwise`: quantize / dequantize in blocks, nibble packing, double quantization, the state dataclasses;
- `dynamic8`: the 8-bit dynamic map and blockwise 8-bit quantization (8-bit optimizer states, NF4's absmax);
- `int8`: LLM.int8-style row-wise absmax int8 codes with 16-bit outlier columns.

The frozen 4-bit layer built on it, `Linear4bit` (with `quantize_model` and `dense_weight`), lives in
`minilora.linear4bit`, the 8-bit one in `minilora.linear8bit`; the Triton dequantization kernel in
`minilora.kernels.nf4_dequant`.
"""
from __future__ import annotations

from .blockwise import (
                        DOUBLE_QUANT_BLOCKSIZE,
                        NF4_BLOCKSIZE,
                        DoubleQuantState,
                        NF4State,
                        check_blocksize,
                        check_state,
                        dequantize_nf4_reference,
                        double_quantize_absmax,
                        pack_nibbles,
                        quantization_error,
                        quantize_nf4,
                        unpack_nibbles,
)
from .dynamic8 import dequantize_blockwise_8bit, dynamic_map, quantize_blockwise_8bit
from .nf4 import (
                        NF4_CODEBOOK,
                        derive_nf4_codebook,
                        dynamic_map_8bit,
                        nf4_codebook,
                        nf4_midpoints,
                        nf4_offset,
                        uniform_int4_codebook,
)

__all__ = ["NF4_CODEBOOK", "NF4_BLOCKSIZE", "DOUBLE_QUANT_BLOCKSIZE", "DoubleQuantState", "NF4State", "check_blocksize",
           "check_state", "dequantize_blockwise_8bit", "dequantize_nf4_reference", "derive_nf4_codebook",
           "double_quantize_absmax", "dynamic_map", "dynamic_map_8bit", "nf4_codebook", "nf4_midpoints", "nf4_offset",
           "pack_nibbles", "quantization_error", "quantize_blockwise_8bit", "quantize_nf4", "uniform_int4_codebook",
           "unpack_nibbles"]

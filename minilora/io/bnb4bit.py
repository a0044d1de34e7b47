"""4-bit weights in the layout transformers + bitsandbytes save and load (``load_in_4bit``, NF4, double quant).

A model saved by ``save_pretrained`` after ``from_pretrained(..., quantization_config=BitsAndBytesConfig(
load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))`` keeps, per quantized weight
``<name>.weight`` (checked against transformers 5.24 + bitsandbytes 0.50.2 on a CPU):

=====================================================  =========  ==================================================
tensor                                                 dtype      what it is
=====================================================  =========  ==================================================
``<name>.weight``                                      uint8      the NF4 codes, two per byte, shape (numel/2, 1)
``<name>.weight.absmax``                               uint8      each block's absmax as an 8-bit dynamic code
``<name>.weight.nested_absmax``                        float32    one scale per group of 256 absmax codes
``<name>.weight.nested_quant_map``                     float32    the 256-entry 8-bit dynamic map
``<name>.weight.quant_map``                            float32    the 16 NF4 levels
``<name>.weight.quant_state.bitsandbytes__nf4``        uint8      a JSON blob: quant_type, blocksize, dtype, shape,
                                                                  nested_blocksize, nested_dtype, nested_offset
=====================================================  =========  ==================================================

and ``config.json`` carries a ``quantization_config`` with ``quant_method: "bitsandbytes"``. Every other tensor
(embeddings, norms, ``lm_head``) stays in 16-bit. minilora's NF4 (`minilora.quant.blockwise`) is byte for byte what
bitsandbytes stores, so this module only names and lays out the pieces; `dequantize_bnb4bit_state_dict` reads them
back into dense weights for minilora's own loader.
"""
from __future__ import annotations

import json

import torch

from ..dtypes import dtype_name, parse_dtype
from ..quant.blockwise import NF4_BLOCKSIZE, DoubleQuantState, NF4State, dequantize_nf4_reference, quantize_nf4
from ..quant.nf4 import NF4_CODEBOOK

QUANT_STATE_KEY = "quant_state.bitsandbytes__nf4"
PIECES = ("absmax", "nested_absmax", "nested_quant_map", "quant_map", QUANT_STATE_KEY)


def quantization_config(compute_dtype: torch.dtype) -> dict:
    """The ``quantization_config`` entry of config.json, with the fields transformers writes for NF4 + double quant."""
    return {
        "_load_in_4bit": True, "_load_in_8bit": False,
        "bnb_4bit_compute_dtype": dtype_name(compute_dtype), "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0,
        "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes",
    }


def is_bnb4bit(config: dict) -> bool:
    qc = config.get("quantization_config") or {}
    return qc.get("quant_method") == "bitsandbytes" and bool(qc.get("load_in_4bit"))


def _json_bytes(blob: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(blob).encode("utf-8")), dtype=torch.uint8)


def quantize_weight(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The six tensors that stand for weight ``name`` (e.g. ``model.layers.0.mlp.up_proj.weight``).

    ``w`` is quantized as it is (its dtype is recorded as the dtype to dequantize to, as bitsandbytes does)."""
    if w.dim() != 2:
        raise ValueError(f"{name}: only 2-D linear weights are stored in 4-bit, got shape {tuple(w.shape)}")
    state = quantize_nf4(w, NF4_BLOCKSIZE, double_quant=True)
    dq = state.double_quant
    blob = {"quant_type": "nf4", "blocksize": NF4_BLOCKSIZE, "dtype": dtype_name(w.dtype), "shape": list(w.shape),
            "nested_blocksize": dq.blocksize, "nested_dtype": "float32", "nested_offset": dq.offset.item()}
    return {
        name: state.codes.reshape(-1, 1),  # bitsandbytes keeps the packed bytes as a column
        f"{name}.absmax": dq.absmax_codes,
        f"{name}.nested_absmax": dq.scales,
        f"{name}.nested_quant_map": dq.code.clone(),
        f"{name}.quant_map": NF4_CODEBOOK.clone(),
        f"{name}.{QUANT_STATE_KEY}": _json_bytes(blob),
    }


def quantize_state_dict(tensors: dict[str, torch.Tensor], weight_names) -> dict[str, torch.Tensor]:
    """``tensors`` with every name in ``weight_names`` replaced by its 4-bit pieces; the rest unchanged."""
    weight_names = set(weight_names)
    missing = sorted(weight_names - set(tensors))
    if missing:
        raise KeyError(f"no tensor named {missing[0]!r} to quantize ({len(missing)} missing)")
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        out.update(quantize_weight(name, t) if name in weight_names else {name: t})
    return {k: v.contiguous() for k, v in out.items()}


def _state_of(name: str, sd: dict[str, torch.Tensor]) -> NF4State:
    try:
        blob = json.loads(bytes(sd[f"{name}.{QUANT_STATE_KEY}"].tolist()).decode("utf-8"))
        pieces = {p: sd[f"{name}.{p}"] for p in PIECES[:4]}
    except KeyError as e:
        raise ValueError(f"4-bit weight {name!r} lacks its quant state piece {e.args[0]!r}: the file is incomplete "
                         "or was not written by transformers/bitsandbytes or minilora") from None
    if blob.get("quant_type") != "nf4":
        raise ValueError(f"{name}: quant_type {blob.get('quant_type')!r} is not supported (minilora reads NF4 only)")
    if not torch.equal(pieces["quant_map"].float(), NF4_CODEBOOK):
        raise ValueError(f"{name}: its quant_map is not the NF4 table")
    dq = DoubleQuantState(pieces["absmax"].reshape(-1), pieces["nested_absmax"].float().reshape(-1),
                          torch.tensor(float(blob["nested_offset"])), int(blob["nested_blocksize"]),
                          pieces["nested_quant_map"].float())
    return NF4State(sd[name].reshape(-1), None, int(blob["blocksize"]), torch.Size(blob["shape"]),
                    parse_dtype(blob["dtype"]), dq)


def dequantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict read from a bitsandbytes 4-bit file, with every 4-bit weight turned back into a dense tensor."""
    suffix = "." + QUANT_STATE_KEY
    names = {k[: -len(suffix)] for k in sd if k.endswith(suffix)}
    pieces = {f"{n}.{p}" for n in names for p in PIECES}
    return {k: dequantize_nf4_reference(_state_of(k, sd)) if k in names else v
            for k, v in sd.items() if k not in pieces}

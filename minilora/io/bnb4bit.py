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
import math

import torch

from ..dtypes import dtype_name, parse_dtype
from ..finite import check_finite
from ..quant.blockwise import (
    NF4_BLOCKSIZE,
    DoubleQuantState,
    NF4State,
    check_state,
    dequantize_nf4_reference,
    quantize_nf4,
)
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


def _blob_field(blob: dict, key: str, kind, where: str):
    """One field of a quant state's JSON blob, of the Python type ``kind`` (positive for numbers)."""
    value = blob.get(key)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and kind is int:
        ok = value > 0
    if ok and kind is list:
        ok = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    if ok and kind in ((int, float), float):
        ok = math.isfinite(value)
    if not ok:
        raise ValueError(f"{where}: its quant state's {key!r} is {value!r}, which is not a valid value; the file is "
                         "damaged")
    return value


def _state_of(name: str, sd: dict[str, torch.Tensor], source: str = "the 4-bit checkpoint") -> NF4State:
    where = f"{source}: 4-bit weight {name!r}"
    try:
        raw, codes = sd[f"{name}.{QUANT_STATE_KEY}"], sd[name]
        pieces = {p: sd[f"{name}.{p}"] for p in PIECES[:4]}
    except KeyError as e:
        raise ValueError(f"{where} lacks its quant state piece {e.args[0]!r}: the file is incomplete or was not "
                         "written by transformers/bitsandbytes or minilora") from None
    try:
        blob = json.loads(bytes(raw.reshape(-1).to(torch.uint8).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        blob = None
    if not isinstance(blob, dict):
        raise ValueError(f"{where}: its {QUANT_STATE_KEY} is not a JSON object; the file is damaged")
    if blob.get("quant_type") != "nf4":
        raise ValueError(f"{where}: quant_type {blob.get('quant_type')!r} is not supported (minilora reads NF4 only)")
    if not torch.equal(pieces["quant_map"].float(), NF4_CODEBOOK):
        raise ValueError(f"{where}: its quant_map is not the NF4 table")
    # numbers that scale every weight: a NaN or inf among them would make the whole weight NaN, far from its cause
    check_finite(((f"{name}.{p}", pieces[p]) for p in ("nested_absmax", "nested_quant_map")), source,
                 "the 4-bit checkpoint is damaged: save or download it again")
    try:
        dtype = parse_dtype(blob.get("dtype"))
    except ValueError:
        raise ValueError(f"{where}: its quant state's 'dtype' is {blob.get('dtype')!r}, not float32, float16 or "
                         "bfloat16; the file is damaged") from None
    dq = DoubleQuantState(pieces["absmax"].reshape(-1), pieces["nested_absmax"].float().reshape(-1),
                          torch.tensor(float(_blob_field(blob, "nested_offset", (int, float), where))),
                          _blob_field(blob, "nested_blocksize", int, where), pieces["nested_quant_map"].float())
    state = NF4State(codes.reshape(-1), None, _blob_field(blob, "blocksize", int, where),
                     torch.Size(_blob_field(blob, "shape", list, where)), dtype, dq)
    try:
        check_state(state)  # every piece's size fits the shape: dequantizing allocates only what the file holds
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    return state


def dequantize_state_dict(sd: dict[str, torch.Tensor], source: str = "the 4-bit checkpoint") -> dict[str, torch.Tensor]:
    """A state dict read from a bitsandbytes 4-bit file, with every 4-bit weight turned back into a dense tensor.
    ``source`` names the file in errors."""
    suffix = "." + QUANT_STATE_KEY
    names = {k[: -len(suffix)] for k in sd if k.endswith(suffix)}
    pieces = {f"{n}.{p}" for n in names for p in PIECES}
    return {k: dequantize_nf4_reference(_state_of(k, sd, source)) if k in names else v
            for k, v in sd.items() if k not in pieces}

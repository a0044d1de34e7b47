"""Exercise 5.2 — reference solution."""
import math

PREFIX = "base_model.model."


def merged_weight(W, A, B, lora_alpha, r, use_rslora=False):
    scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
    return (W.float() + scaling * (B.float() @ A.float())).to(W.dtype)


def merge_state_dict(base, adapter, lora_alpha, r, use_rslora=False):
    out = dict(base)
    for key in adapter:
        if not key.endswith(".lora_A.weight"):
            continue
        layer = key[len(PREFIX):-len(".lora_A.weight")]
        name = f"{layer}.weight"
        if name not in base:
            raise KeyError(f"adapter layer {layer!r} has no base weight {name!r}: the adapter is for another model")
        out[name] = merged_weight(base[name], adapter[key], adapter[f"{PREFIX}{layer}.lora_B.weight"], lora_alpha, r,
                                  use_rslora)
    return out

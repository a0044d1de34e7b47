"""LoRA from scratch: a frozen base layer plus a trainable low-rank update.

$h = W x + \\frac{\\alpha}{r} B A x$ with A (r, in) and B (out, r). Only A and B train: r·(in + out) numbers per layer
instead of in·out, and no gradient or optimizer state for W. B starts at zero, so training starts from the base
model exactly. rsLoRA scales by $\\alpha / \\sqrt{r}$ instead, which keeps the update's size steady as r grows.
Attribute names (base_layer, lora_A, lora_B) match PEFT's, so adapters map onto PEFT's files key for key.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from . import ops
from .kernels.fast_lora import LoraWeights
from .linear4bit import Linear4bit, QuantizedLinear, dense_weight

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraLinear(nn.Module):
    def __init__(self, base_layer: nn.Module, r: int = 16, lora_alpha: float = 16, lora_dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r = r
        self.set_scaling(lora_alpha, use_rslora)
        weight = _stored_weight(base_layer)
        # fp32 adapters under an fp16 base (as PEFT does): fp16 gradients cannot be unscaled by loss scaling, and an
        # fp16 update of a small weight rounds away. NF4 bases store uint8 codes: their adapters are fp32 too.
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.bfloat16, torch.float64) else torch.float32
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=weight.device, dtype=dtype)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    def set_scaling(self, lora_alpha: float, use_rslora: bool) -> None:
        """alpha/r (alpha/sqrt(r) with rsLoRA): what the update BA is multiplied by."""
        if self.__dict__.get("merged"):
            raise ValueError("this LoraLinear is merged: call unmerge() before changing its scaling")
        self.lora_alpha, self.use_rslora = lora_alpha, use_rslora
        self.scaling = lora_alpha / math.sqrt(self.r) if use_rslora else lora_alpha / self.r

    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear initializes its weight
        nn.init.zeros_(self.lora_B.weight)  # ΔW = BA = 0: the adapted model starts as the base model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        dx = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        return out + (self.lora_B(self.lora_A(dx)) * self.scaling).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """$\\Delta W = \\frac{\\alpha}{r} B A$, shape (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the base weight: inference then costs one matmul, like the original model."""
        if not self.merged:
            self._add_to_base(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._add_to_base(-self.delta_weight())
            self.merged = False

    def _add_to_base(self, delta: torch.Tensor) -> None:
        if isinstance(self.base_layer, QuantizedLinear):  # dequantize, add, requantize (lossy)
            self.base_layer.add_to_weight(delta)
        else:
            w = dense_weight(self.base_layer)
            w.data += delta.to(w.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, use_rslora={self.use_rslora}"


def _stored_weight(layer: nn.Module) -> torch.Tensor:
    """The tensor a base layer stores its weight in (uint8 / int8 codes for a 4- / 8-bit layer): its device and
    dtype decide where and in which precision the adapters are created."""
    if not isinstance(layer, (nn.Linear, QuantizedLinear)):
        raise TypeError(f"cannot wrap {type(layer).__name__} in LoRA: LoRA wraps nn.Linear, Linear4bit or "
                        "Linear8bit layers")
    return layer.weight.data


# --- the fast path: whole blocks of LoRA projections with one hand-written backward ------------------------------
def lora_weights(layer: nn.Module) -> LoraWeights:
    """The tensors of one LoraLinear that `minilora.kernels.fast_lora` computes with; refuses layers it can't take."""
    if not isinstance(layer, LoraLinear):
        raise TypeError(f"fast LoRA needs LoraLinear layers, got {type(layer).__name__}")
    if not isinstance(layer.lora_dropout, nn.Identity):
        raise ValueError("fast LoRA needs lora_dropout=0 (dropout's random mask is not part of the hand-written "
                         "backward); use the plain LoraLinear forward")
    if layer.merged:
        raise ValueError("this LoraLinear is merged: call unmerge() before training with fast LoRA")
    base = layer.base_layer
    if any(p.requires_grad for p in base.parameters()):
        raise ValueError("fast LoRA keeps the base layer frozen, but it has a trainable parameter: freeze it "
                         "(get_peft_model does) or use the plain LoraLinear path")
    if isinstance(base, QuantizedLinear) and not isinstance(base, Linear4bit):
        raise TypeError(f"fast LoRA takes a dense or NF4 base weight, not a {type(base).__name__}: use the plain "
                        "LoraLinear path")
    weight = base.quant_state if isinstance(base, Linear4bit) else base.weight
    return LoraWeights(weight, base.bias, layer.lora_A.weight, layer.lora_B.weight, layer.scaling)


def fast_lora_weights(x: torch.Tensor, layers, block: str | None = None) -> list[LoraWeights] | None:
    """LoraWeights for every layer when ops puts x on the fast path (for this block: "lora_mlp" or "lora_qkv")
    and each layer qualifies, else None."""
    if not ops.fast_lora_on(x, block):
        return None
    for layer in layers:
        if not isinstance(layer, LoraLinear) or layer.merged or not isinstance(layer.lora_dropout, nn.Identity):
            return None
        base = layer.base_layer
        if isinstance(base, QuantizedLinear) and not isinstance(base, Linear4bit):
            return None  # the fast kernels take a dense or NF4 weight; an int8 base goes layer by layer
        # a leaf module's own parameter dict is all parameters() would visit, without its generator machinery
        params = base.parameters() if base._modules else base._parameters.values()
        if any(p is not None and p.requires_grad for p in params):
            return None
    return [lora_weights(layer) for layer in layers]


def project(x: torch.Tensor, *layers: nn.Module) -> tuple:
    """(layer(x) for each layer) — LoRA projections of one input (q/k/v, or o) through one fast-LoRA Function
    when the fast path applies, so their backward shares one dx buffer; else the layers one by one."""
    weights = fast_lora_weights(x, layers, "lora_qkv")
    if weights is not None:
        return ops.lora_projections(x, *weights)
    return tuple(layer(x) for layer in layers)


def swiglu_mlp(x: torch.Tensor, gate: nn.Module, up: nn.Module, down: nn.Module) -> torch.Tensor:
    """down(silu(gate(x)) * up(x)): the LoRA MLP with its hand-written backward when the fast path applies."""
    weights = fast_lora_weights(x, (gate, up, down), "lora_mlp")
    if weights is not None:
        return ops.lora_mlp(x, *weights)
    return down(ops.swiglu(gate(x), up(x)))


def lora_layers(model: nn.Module):
    """(name, LoraLinear) for every adapted layer."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def check_lora_args(r, lora_alpha, lora_dropout, bias="none") -> None:
    """The LoRA settings' checks, for `get_peft_model` and for callers that check before anything loads."""
    if bias != "none":
        raise ValueError(f"bias={bias!r}: minilora trains LoRA weights only; use bias='none' (as Unsloth recommends)")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if isinstance(lora_dropout, bool) or not isinstance(lora_dropout, (int, float)) or not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not (
            math.isfinite(lora_alpha) and lora_alpha > 0):
        raise ValueError(f"lora_alpha must be a finite number > 0 (the update is scaled by alpha/r: 0 would train "
                         f"nothing), got {lora_alpha!r}")


def get_peft_model(model: nn.Module, r: int = 16, target_modules=None, lora_alpha: float = 16,
                   lora_dropout: float = 0.0, bias: str = "none", use_rslora: bool = False,
                   random_state: int | None = 3407, verbose: bool = True) -> nn.Module:
    """Wrap every targeted linear layer in LoraLinear and freeze all other parameters (in place; returns model)."""
    check_lora_args(r, lora_alpha, lora_dropout, bias)
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters; load a fresh base model before adding new ones")
    chosen = targeted_modules(model, TARGET_MODULES if target_modules is None else target_modules)
    if random_state is not None:
        torch.manual_seed(random_state)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child_name, LoraLinear(getattr(parent, child_name), r, lora_alpha, lora_dropout, use_rslora))
    targets = target_modules if isinstance(target_modules, str) else list(
        TARGET_MODULES if target_modules is None else target_modules)
    model.peft_config = dict(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                             bias=bias, use_rslora=use_rslora)
    if verbose:
        print(trainable_summary(model))
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """The inverse of get_peft_model's wrapping: every LoraLinear is replaced by its base layer (its update is
    dropped, not merged) and model.peft_config is removed. Parameters' requires_grad flags are left as they are."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoraLinear):
                if child.merged:
                    child.unmerge()
                setattr(module, child_name, child.base_layer)
    if "peft_config" in model.__dict__:
        del model.peft_config
    return model


def targeted_modules(model: nn.Module, target_modules) -> list[str]:
    """Full names of the modules ``target_modules`` selects, with PEFT's rules: a string is a regular expression
    that must match a whole module name (``r".*\\.(q_proj|v_proj)"``), or "all-linear" (every linear layer but the
    output head); a list names modules by their last name parts (``"q_proj"``, ``"self_attn.o_proj"``)."""
    modules = {name: m for name, m in model.named_modules() if name}
    wrappable = (nn.Linear, QuantizedLinear)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, wrappable)})
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            chosen = [n for n, m in modules.items()
                      if isinstance(m, wrappable) and n.rsplit(".", 1)[-1] != "lm_head"]
        else:
            chosen = [n for n in modules if re.fullmatch(target_modules, n)]
        if not chosen:
            raise ValueError(f"target_modules={target_modules!r} is a regular expression that must match a whole "
                             f"module name (as in PEFT), and it matches none here (e.g. {next(iter(modules), '')!r}). "
                             f"To target layers by name pass a list, e.g. [{target_modules!r}], or a pattern like "
                             f"r'.*\\.{target_modules}'; this model's linear layers are {linear}")
    else:
        if not isinstance(target_modules, (list, tuple, set)) or not all(isinstance(t, str) for t in target_modules):
            raise TypeError(f"target_modules must be a list of module names or a regular expression string, got "
                            f"{target_modules!r}")

        def hit(name: str, target: str) -> bool:
            return name == target or name.endswith("." + target)
        missing = [t for t in target_modules if not any(hit(n, t) for n in modules)]
        if missing:
            raise ValueError(f"target_modules {missing} do not exist in this model; its linear layers are {linear}")
        chosen = [n for n in modules if any(hit(n, t) for t in target_modules)]
    wrong = [(n, type(modules[n]).__name__) for n in chosen if not isinstance(modules[n], wrappable)]
    if wrong:
        raise ValueError(f"target_modules selects {wrong[0][0]} ({wrong[0][1]}), but LoRA here wraps linear layers "
                         f"only (nn.Linear, Linear4bit or Linear8bit): choose among {linear}")
    return chosen


def trainable_summary(model: nn.Module) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if hasattr(model, "num_parameters"):  # minilora models count a 4-bit layer's packed weights as weights
        total = model.num_parameters()
    else:
        total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def merge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()

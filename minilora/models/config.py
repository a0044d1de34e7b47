"""ModelConfig: every number that shapes a Llama-family model, in one dataclass (nanoGPT style)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .family import MODEL_TYPES, family

POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
OPTIONAL = ("num_key_value_heads", "head_dim", "sliding_window")  # None has a meaning for these
POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")
BOOLS = ("tie_word_embeddings", "attention_bias", "qkv_bias")
HIDDEN_ACTS = ("silu", "gelu", "gelu_pytorch_tanh")  # the MLP activations minilora implements
ROPE_TYPES = ("default", "llama3")  # RoPE frequency scalings minilora implements (models/rotary.py)
LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no grouped-query attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama-3's "llama3" frequency scaling, or None
    hidden_act: str = "silu"  # silu -> SwiGLU MLP; gelu / gelu_pytorch_tanh -> GeGLU MLP
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v and o (Llama's option)
    qkv_bias: bool = False  # bias on q, k, v only (Qwen2)
    sliding_window: int | None = None  # Mistral: a token sees at most this many previous tokens
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # HF keys minilora does not use, kept for saving

    def __post_init__(self):
        self._check_types()
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}: each KV head must serve a whole "
                             "group of query heads")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even: RoPE rotates pairs of dimensions")

    def _check_types(self) -> None:
        """Every value of the right kind, before any arithmetic: a config.json typed by hand may hold "64" or
        2.5 where an integer belongs, and torch would fail later with a message that names no key."""
        def bad(key, value, want):
            return ValueError(f"config key {key!r} must be {want}, got {value!r} ({type(value).__name__}) — fix it "
                              "in config.json")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for key in POSITIVE_INTS:
            v = getattr(self, key)
            if not (is_int(v) and v > 0) and not (v is None and key in OPTIONAL):
                raise bad(key, v, "a positive integer")
        for key in POSITIVE_FLOATS:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise bad(key, v, "a finite number > 0")
        for key in BOOLS:
            if not isinstance(getattr(self, key), bool):
                raise bad(key, getattr(self, key), "true or false")
        for key in ("model_type", "hidden_act"):
            if not isinstance(getattr(self, key), str):
                raise bad(key, getattr(self, key), "a string")
        if self.hidden_act not in HIDDEN_ACTS:
            raise bad("hidden_act", self.hidden_act, f"one of {', '.join(HIDDEN_ACTS)} (silu: SwiGLU, gelu: GeGLU)")
        for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
            v = getattr(self, key)
            ids = v if key == "eos_token_id" and isinstance(v, list) else [v]
            if v is not None and not all(is_int(i) for i in ids):
                raise bad(key, v, "an integer token id" + (" or a list of them" if key == "eos_token_id" else ""))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise bad("rope_scaling", self.rope_scaling, "an object (or null)")
        if self.rope_scaling:
            self._check_rope_scaling(bad)

    @property
    def rope_type(self) -> str:
        """The RoPE variant rope_scaling names ("default" without one; older configs call the key "type")."""
        scaling = self.rope_scaling or {}
        return scaling.get("rope_type", scaling.get("type", "default"))

    def _check_rope_scaling(self, bad) -> None:
        scaling, rope_type = self.rope_scaling, self.rope_type
        if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
            raise bad("rope_scaling.rope_type", rope_type, f"one of {', '.join(ROPE_TYPES)} (others are not supported)")
        if rope_type != "llama3":
            return
        for key in LLAMA3_SCALING_KEYS:
            v = scaling.get(key)
            if (v is not None or key == "factor") and (
                    isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)):
                raise bad(f"rope_scaling.{key}", v, "a finite number > 0")
        if scaling.get("low_freq_factor", 1.0) >= scaling.get("high_freq_factor", 4.0):
            raise bad("rope_scaling.low_freq_factor", scaling.get("low_freq_factor", 1.0),
                      "smaller than rope_scaling.high_freq_factor (the band between them is blended)")

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head (grouped-query attention)."""
        return self.num_attention_heads // self.num_key_value_heads

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    def to_hf_dict(self, torch_dtype: str | None = None) -> dict:
        """The ``config.json`` transformers reads: these numbers plus the keys it expects (the inverse of
        `from_dict`; transformers 5 keeps rope_theta and rope_scaling under ``rope_parameters``). The family's
        record names the transformers class and adds its own keys."""
        record = family(self.model_type)
        d = {k: v for k, v in self.to_dict().items() if not k.startswith("_")}
        d["architectures"] = [record.hf_architecture]
        if torch_dtype is not None:
            d["torch_dtype"] = torch_dtype
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(self.rope_scaling)
        d["rope_parameters"] = rope
        d.setdefault("mlp_bias", False)
        return record.config_to_hf(d) if record.config_to_hf else d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a Hugging Face ``config.json`` dict (unknown keys go to ``extra``)."""
        d = dict(d)
        rope = d.pop("rope_parameters", None)  # transformers 5 moved rope_theta and rope_scaling here
        if rope is not None and not isinstance(rope, dict):
            raise ValueError(f"config key 'rope_parameters' must be an object, got {rope!r} ({type(rope).__name__}) "
                             "— fix it in config.json")
        if isinstance(rope, dict):
            d.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                d.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
        record = MODEL_TYPES.get(d.get("model_type")) if isinstance(d.get("model_type"), str) else None
        if record is not None and record.config_from_hf:  # an unknown model_type is refused where it is built
            d = record.config_from_hf(d)
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names and k != "extra"}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

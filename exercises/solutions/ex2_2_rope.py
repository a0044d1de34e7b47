"""Exercise 2.2 — reference solution: minilora's own rotate-half RoPE and its GGUF row reordering."""
from minilora.io.gguf import unpermute_qk as gguf_to_rotate_half
from minilora.kernels.rope import rope_reference as apply_rope
from minilora.kernels.rope import rotate_half

__all__ = ["rotate_half", "apply_rope", "gguf_to_rotate_half"]

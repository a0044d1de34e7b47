"""Exercise 1.2 — LoRA vs full fine-tuning: count the parameters and the bytes training needs.

Read lessons/week1_lora.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex1_2` until it is green. Work from the numbers in a `minilora.models.ModelConfig` only: no model needs
to be built (the tests check your counts against real models built on the meta device).
"""
from minilora.models import ModelConfig

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def projection_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each of the seven linear layers in ONE decoder layer.

    With C = hidden_size, I = intermediate_size, hd = head_dim, nh = num_attention_heads and
    nkv = num_key_value_heads: q_proj maps C to nh·hd, k_proj and v_proj map C to nkv·hd (grouped-query attention
    gives them fewer heads), o_proj maps nh·hd back to C; gate_proj and up_proj map C to I, down_proj maps I to C.
    Return a dict keyed by the names in PROJECTIONS.
    """
    raise NotImplementedError("Exercise 1.2: projection_shapes — see lessons/week1_lora.py")


def lora_parameter_count(config: ModelConfig, r: int, target_modules=PROJECTIONS) -> int:
    """Trainable parameters LoRA adds: for every layer and every targeted projection, A (r, in) + B (out, r).

    That is r · (in + out) per projection, summed over `target_modules` and over all num_hidden_layers layers.
    """
    raise NotImplementedError("Exercise 1.2: lora_parameter_count — see lessons/week1_lora.py")


def model_parameter_count(config: ModelConfig) -> int:
    """Every parameter of the model (what full fine-tuning trains).

    Count: the embedding (V · C); per layer the seven projections (plus a bias on q, k and v when config.qkv_bias,
    and on all four attention projections when config.attention_bias), and two RMSNorm weights (C each); the final
    RMSNorm (C); and lm_head (V · C) unless config.tie_word_embeddings, where it shares the embedding's matrix.
    """
    raise NotImplementedError("Exercise 1.2: model_parameter_count — see lessons/week1_lora.py")


def training_bytes(frozen: int, trainable: int, weight_bytes: int = 2, grad_bytes: int = 2,
                   optimizer_bytes: int = 4) -> int:
    """Bytes of weights + gradients + optimizer state while training (activations not included).

    Every parameter, frozen or trainable, stores its weight (`weight_bytes`, 2 for bf16). Only trainable ones
    also get a gradient (`grad_bytes`) and AdamW's two moments, exp_avg and exp_avg_sq (`optimizer_bytes`,
    4 = two bf16 numbers: torch.optim.AdamW keeps them in the parameter's dtype; pass 8 for fp32 moments).
    Full fine-tuning: frozen = 0. LoRA: frozen = the base model, trainable = the adapters.
    """
    raise NotImplementedError("Exercise 1.2: training_bytes — see lessons/week1_lora.py")

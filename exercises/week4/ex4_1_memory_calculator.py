"""Exercise 4.1 — the memory calculator: bytes of weights, gradients and optimizer state for full / LoRA / QLoRA.

Read lessons/week4_memory.py first. Replace each `raise NotImplementedError(...)` with your code, then run
`pytest -m ex4_1` until it is green. The tests compare your numbers with `minilora.memory` for real model configs.
"""


def nf4_bits_per_param(blocksize: int = 64, double_quant: bool = True, dq_blocksize: int = 256) -> float:
    """Bits one NF4-stored parameter costs, its share of the quantization state included.

    4 bits of code, plus per block of `blocksize` values: a float32 absmax (32 bits), or with double quantization
    an 8-bit code for the absmax plus one float32 scale per `dq_blocksize` blocks. (Ignore the single 4-byte offset
    per tensor.) Expected: 4.5 bits at blocksize 64 without double quantization, ≈ 4.127 with.
    """
    raise NotImplementedError("Exercise 4.1: nf4_bits_per_param — see lessons/week4_memory.py")


def training_bytes(n_params: int, n_quantized: int, n_trainable: int, weight_bytes: int = 2,
                   trainable_bytes: int = 4, adam_states: int = 2, blocksize: int = 64,
                   double_quant: bool = True) -> dict:
    """Bytes for one training run's static memory (no activations). Return a dict with int-or-float values:

    weights:    the n_quantized parameters at nf4_bits_per_param(...) bits, the other n_params − n_quantized at
                `weight_bytes` bytes each, plus the n_trainable adapter parameters at `trainable_bytes` bytes
                (for full fine-tuning pass n_quantized = 0, n_trainable = 0 and count gradients/optimizer with
                n_params instead — see `full_finetune_bytes`)
    gradients:  n_trainable · trainable_bytes
    optimizer:  adam_states · n_trainable · trainable_bytes
    total:      the sum of the three
    """
    raise NotImplementedError("Exercise 4.1: training_bytes — see lessons/week4_memory.py")


def full_finetune_bytes(n_params: int, weight_bytes: int = 2, adam_states: int = 2) -> dict:
    """Full fine-tuning: every parameter has a weight, a gradient and `adam_states` moments, all `weight_bytes`
    each (as torch.optim.AdamW keeps its moments in the parameter's dtype). Same keys as training_bytes."""
    raise NotImplementedError("Exercise 4.1: full_finetune_bytes — see lessons/week4_memory.py")

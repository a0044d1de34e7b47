"""Exercise 4.1 — reference solution."""


def nf4_bits_per_param(blocksize=64, double_quant=True, dq_blocksize=256):
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * dq_blocksize)
    return 4 + 32 / blocksize


def training_bytes(n_params, n_quantized, n_trainable, weight_bytes=2, trainable_bytes=4, adam_states=2,
                   blocksize=64, double_quant=True):
    weights = (n_quantized * nf4_bits_per_param(blocksize, double_quant) / 8
               + (n_params - n_quantized) * weight_bytes + n_trainable * trainable_bytes)
    grads = n_trainable * trainable_bytes
    opt = adam_states * grads
    return {"weights": weights, "gradients": grads, "optimizer": opt, "total": weights + grads + opt}


def full_finetune_bytes(n_params, weight_bytes=2, adam_states=2):
    w = n_params * weight_bytes
    return {"weights": w, "gradients": w, "optimizer": adam_states * w, "total": (2 + adam_states) * w}

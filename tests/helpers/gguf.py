"""A complete one-layer Llama GGUF (hidden 32, ffn 48, 2 heads, 1 KV head, 6 tokens) for reader tests, with any
metadata value overridden: the tests of claimed sizes and of wrongly typed fields start from it."""
from __future__ import annotations

TENSORS = (("token_embd", (6, 32)), ("output_norm", (32,)), ("blk.0.attn_q", (32, 32)), ("blk.0.attn_k", (16, 32)),
           ("blk.0.attn_v", (16, 32)), ("blk.0.attn_output", (32, 32)), ("blk.0.ffn_gate", (48, 32)),
           ("blk.0.ffn_up", (48, 32)), ("blk.0.ffn_down", (32, 48)), ("blk.0.attn_norm", (32,)),
           ("blk.0.ffn_norm", (32,)))


def write_llama_gguf(path, block_count: int = 1, tensors: bool = True, **overrides) -> None:
    """``overrides``: metadata key -> value (lists become GGUF arrays). ``tensors=False`` writes metadata only."""
    import gguf
    import numpy as np
    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab", "<s>", "</s>", "é"],
              "tokenizer.ggml.token_type": [1, 1, 1, 3, 3, 1], "tokenizer.ggml.merges": ["a b"],
              "tokenizer.ggml.bos_token_id": 3, "tokenizer.chat_template": "{{ messages[0]['content'] }}"}
    fields.update(overrides)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in ((w.add_block_count, block_count), (w.add_context_length, 64), (w.add_embedding_length, 32),
                       (w.add_feed_forward_length, 48), (w.add_head_count, 2), (w.add_head_count_kv, 1)):
        add(value)
    for key, value in fields.items():
        if isinstance(value, list):
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
    if tensors:
        g = np.random.default_rng(0)
        for name, shape in TENSORS:
            w.add_tensor(f"{name}.weight", g.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

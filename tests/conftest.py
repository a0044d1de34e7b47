"""Shared fixtures for the library's tests.

- ``smollm2``: (model, tokenizer) of the bundled SmolLM2-135M-Instruct, fp32 on CPU, loaded once per session.
  Treat it as read-only: never train it, add adapters to it or merge into it (copy.deepcopy it if you must).
- ``hf_smollm2``: transformers' own load of the same GGUF (model, tokenizer) — an independent reference.
- ``tiny_checkpoint``: a factory that saves a tiny random transformers model (llama / mistral / qwen2) with
  ``save_pretrained`` and returns (directory, transformers model).
- ``tiny_gguf``: a factory that writes a tiny random Llama as a GGUF file the way llama.cpp's converter does
  (q/k rows permuted; Q4_1, Q8_0, F16 and F32 tensors) and returns (path, transformers model it came from).
"""
from __future__ import annotations

import pytest
import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0)


@pytest.fixture(scope="session")
def smollm2():
    from minilora import FastLanguageModel
    model, tokenizer = FastLanguageModel.from_pretrained("smollm2", dtype="float32", device="cpu")
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def hf_smollm2():
    transformers = pytest.importorskip("transformers")
    from minilora.io import find_smollm2_gguf
    path = find_smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model.eval()
    return model, tokenizer


def make_tiny_hf_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A tiny random transformers model whose every weight (norms and biases too) is non-trivial."""
    import transformers
    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}
    config_cls, model_cls = classes[model_type]
    kwargs = dict(TINY, **overrides)
    if model_type == "qwen2":
        kwargs.setdefault("use_sliding_window", False)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint("mistral", sliding_window=8, max_shard_size="40KB") -> (dir, transformers model)."""

    def save(model_type: str = "llama", max_shard_size: str | None = None, seed: int = 0, **overrides):
        model = make_tiny_hf_model(model_type, seed=seed, **overrides)
        directory = tmp_path_factory.mktemp(f"tiny_{model_type}")
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(directory, safe_serialization=True, **kwargs)
        return directory, model

    return save


# GGUF tensor names and the storage type the tiny file uses for each (exercising every type minilora reads)
_GGUF_PARTS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GGUF_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
TINY_GGUF_TYPES = {"ffn_gate": "Q4_1", "ffn_up": "Q4_1", "ffn_down": "Q8_0", "token_embd": "Q8_0",
                   "attn_v": "F16"}  # everything else F32 (q and k stay exact, to check the permutation)


def write_tiny_gguf(path, hf_model) -> None:
    import gguf
    import numpy as np

    from minilora.io.gguf import permute_qk
    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(TINY["rope_theta"])
    writer.add_vocab_size(cfg.vocab_size)
    for name, tensor in hf_model.state_dict().items():
        tensor = tensor.float()
        if ".q_proj." in name:  # what llama.cpp's converter does: rotate-half rows -> interleaved pairs
            tensor = permute_qk(tensor, cfg.num_attention_heads)
        elif ".k_proj." in name:
            tensor = permute_qk(tensor, cfg.num_key_value_heads)
        if name in _GGUF_TOP:
            gguf_name = _GGUF_TOP[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{layer}.{_GGUF_PARTS[module]}.{kind}"
        array = tensor.numpy()
        kind = TINY_GGUF_TYPES.get(gguf_name.split(".")[-2], "F32")
        if kind == "F32":
            writer.add_tensor(gguf_name, array)
        elif kind == "F16":
            writer.add_tensor(gguf_name, array.astype(np.float16))
        else:
            qtype = getattr(gguf.GGMLQuantizationType, kind)
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def tiny_gguf(tmp_path_factory):
    """Factory: tiny_gguf(seed=0) -> (path of a .gguf file, the transformers model it was written from)."""

    def make(seed: int = 0, **overrides):
        model = make_tiny_hf_model("llama", seed=seed, **overrides)
        path = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
        write_tiny_gguf(path, model)
        return path, model

    return make

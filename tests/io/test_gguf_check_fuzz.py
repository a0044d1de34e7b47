"""Property-based fuzz of the GGUF and safetensors readers: real files, mutated where their structure lies
(truncated anywhere, a count or length made huge, a type code changed, random bytes), must be read or refused with a
clean error (GGUFError / ValueError / FileNotFoundError) within 2 s — never a hang, a MemoryError or another
exception. Deterministic (derandomized), about half a minute in all."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from helpers.fuzz import FUZZ, time_limit
from helpers.gguf import write_llama_gguf
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.io.gguf import GGUFError, load_gguf
from minilora.io.gguf_check import _Cursor, check_gguf
from minilora.io.safetensors_dir import read_safetensors

CLEAN = (GGUFError, ValueError, FileNotFoundError)
TIME_LIMIT_S = 2
HUGE = [2**64 - 1, 2**63, 2**62 + 7, 2**40, 2**32 + 1, 10**12, 123_456_789]
def read_cleanly(reader, path):
    """The property: the reader returns, or raises one of CLEAN, within the time limit."""
    try:
        with time_limit(TIME_LIMIT_S):
            reader(path)
    except CLEAN:
        pass


def write_small_gguf(path) -> None:
    """A small Llama GGUF with every kind of field the reader meets: numbers, strings, string and number arrays,
    and F32, F16 and Q8_0 tensors."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(48)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab", "<s>", "</s>", "é"])
    w.add_token_types([1, 1, 1, 3, 3, 1])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(3)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    g = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", g.standard_normal((6, 32)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.add_tensor("blk.0.attn_k.weight", g.standard_normal((16, 32)).astype(np.float16))
    q = g.standard_normal((32, 32)).astype(np.float32)
    w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(q, gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    # the rest of a complete one-layer model: the reader checks the metadata's sizes against every tensor
    for name, shape in (("blk.0.attn_v", (16, 32)), ("blk.0.attn_output", (32, 32)), ("blk.0.ffn_gate", (48, 32)),
                        ("blk.0.ffn_up", (48, 32)), ("blk.0.ffn_down", (32, 48)), ("blk.0.attn_norm", (32,)),
                        ("blk.0.ffn_norm", (32,))):
        w.add_tensor(f"{name}.weight", g.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def field_offsets(path) -> tuple[list[int], list[int], int]:
    """Where the header's u64 fields (counts, lengths, dimensions, offsets) and u32 fields (version, type codes,
    dimension counts) start, found by walking the real file, and where the header ends."""
    u64, u32 = [], []
    real_u64, real_u32 = _Cursor.u64, _Cursor.u32

    def rec64(self, what):
        u64.append(self.pos)
        return real_u64(self, what)

    def rec32(self, what):
        u32.append(self.pos)
        return real_u32(self, what)

    _Cursor.u64, _Cursor.u32 = rec64, rec32
    try:
        end = check_gguf(path)["data_start"]
    finally:
        _Cursor.u64, _Cursor.u32 = real_u64, real_u32
    return u64, u32, end


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "small.gguf"
    write_small_gguf(path)
    load_gguf(path)  # the unmutated file reads
    return path.read_bytes(), field_offsets(path)


def mutate(data: bytes, offsets, draw) -> bytes:
    u64, u32, header_end = offsets
    kind = draw(st.sampled_from(["truncate", "huge count", "type code", "random bytes", "insert"]))
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[:draw(st.integers(0, len(data) - 1))])
    if kind == "huge count":
        at = draw(st.sampled_from(u64))
        out[at:at + 8] = struct.pack("<Q", draw(st.sampled_from(HUGE) | st.integers(0, 2**64 - 1)))
    elif kind == "type code":
        at = draw(st.sampled_from(u32))
        out[at:at + 4] = struct.pack("<I", draw(st.integers(0, 40) | st.integers(0, 2**32 - 1)))
    elif kind == "random bytes":
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, header_end - 1))
            out[at] = draw(st.integers(0, 255))
    else:
        at = draw(st.integers(0, header_end))
        out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_mutated_gguf_is_read_or_refused_cleanly(small_gguf, tmp_path, data):
    original, offsets = small_gguf
    path = tmp_path / "m.gguf"
    path.write_bytes(mutate(original, offsets, data.draw))
    read_cleanly(load_gguf, path)


@pytest.fixture(scope="module")
def smollm2_header(tmp_path_factory):
    """The bundled SmolLM2 GGUF's header (metadata with a 49k-token vocabulary and 272 tensor infos), tensors cut."""
    from minilora.io import find_smollm2_gguf
    try:
        source = find_smollm2_gguf()
    except FileNotFoundError:
        pytest.skip("the bundled SmolLM2 GGUF is not installed")
    u64, u32, end = field_offsets(source)
    with open(source, "rb") as f:
        header = f.read(end)
    return header, (u64, u32, end)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_smollm2_header_is_refused_cleanly(smollm2_header, tmp_path, data):
    header, offsets = smollm2_header
    path = tmp_path / "s.gguf"
    path.write_bytes(mutate(header, offsets, data.draw))
    read_cleanly(load_gguf, path)  # the tensors are cut off, so a clean refusal is the only right answer


@pytest.mark.parametrize("item_type", [0, 4, 10, 8])  # u8, u32, u64 (gguf-py looped on these), string
def test_the_huge_array_that_hung_the_loader(tmp_path, item_type):
    """The probe's case: a few dozen bytes whose metadata claims an array of 2^62 items."""
    key = b"tokenizer.ggml.tokens"
    blob = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, item_type, 2**62) + bytes(16))
    (tmp_path / "h.gguf").write_bytes(blob)
    with time_limit(TIME_LIMIT_S), pytest.raises(GGUFError, match="item count of 'tokenizer.ggml.tokens'"):
        load_gguf(tmp_path / "h.gguf")


@pytest.fixture(scope="module")
def small_safetensors(tmp_path_factory):
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("fuzz") / "small.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"a.weight": torch.randn(4, 8, generator=g), "b.bias": torch.randn(3, generator=g).half(),
               "c.ids": torch.arange(5, dtype=torch.int64)}, str(path), metadata={"format": "pt"})
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return data, n


def mutate_header_json(header: dict, draw) -> dict:
    name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "metadata"]))
    value = draw(st.sampled_from([2**64, 2**40, -1, "x", None, [], [1, 2, 3], {"a": 1}, 1.5, "F64", "I8", "Q4"]))
    if field == "drop":
        del header[name]["dtype"]
    elif field == "metadata":
        header["__metadata__"] = value
    elif field in ("shape", "data_offsets") and draw(st.booleans()):
        i = draw(st.integers(0, len(header[name][field]) - 1)) if header[name][field] else 0
        header[name][field] = list(header[name][field]) or [0]
        header[name][field][i] = value
    else:
        header[name][field] = value
    return header


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_is_read_or_refused_cleanly(small_safetensors, tmp_path, data):
    original, n = small_safetensors
    kind = data.draw(st.sampled_from(["truncate", "header length", "header json", "random bytes"]))
    out = bytearray(original)
    if kind == "truncate":
        out = out[:data.draw(st.integers(0, len(original) - 1))]
    elif kind == "header length":
        out[:8] = struct.pack("<Q", data.draw(st.sampled_from(HUGE) | st.integers(0, 2 * len(original))))
    elif kind == "header json":
        header = mutate_header_json(json.loads(original[8:8 + n]), data.draw)
        raw = json.dumps(header).encode()
        out = bytearray(struct.pack("<Q", len(raw)) + raw + original[8 + n:])
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            out[data.draw(st.integers(0, 8 + n - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(out))
    read_cleanly(read_safetensors, path)


# --- sizes a file claims, checked against the tensors it holds ---------------------------------------------------
@pytest.mark.parametrize("tensors", [False, True])
def test_a_tiny_gguf_claiming_a_million_layers_is_refused_at_once(tmp_path, tensors):
    """The probe's case: a ~3 KB file whose metadata says 1,000,000 layers kept the loader building modules for
    over an hour. Its layer count is compared with the tensors before anything is built."""
    from minilora import FastLanguageModel
    path = tmp_path / "claims.gguf"
    write_llama_gguf(path, 1_000_000, tensors, **{"tokenizer.chat_template": "x" * 2500})
    assert tensors or path.stat().st_size < 4_000
    with time_limit(1), pytest.raises(GGUFError, match=r"llama.block_count=1000000.*tensors hold [01] layers"):
        FastLanguageModel.from_pretrained(path, device="cpu")


@pytest.fixture(scope="module")
def two_layer_dir(tmp_path_factory):
    from helpers.train import tiny_model, tiny_tokenizer

    from minilora.save import save_pretrained_merged
    directory = tmp_path_factory.mktemp("claims") / "base"
    save_pretrained_merged(tiny_model(), tiny_tokenizer(), str(directory), save_method="merged_16bit")
    return directory


@pytest.mark.parametrize("key, value, evidence", [
    ("num_hidden_layers", 1_000_000, "tensors hold 2 layers"),
    ("num_hidden_layers", 1, "tensors hold 2 layers"),
    ("vocab_size", 10**12, "embed_tokens.weight has"),
    ("hidden_size", 4096 * 64, "embed_tokens.weight has"),
    ("intermediate_size", 10**9, "gate_proj.weight has"),
    ("num_attention_heads", 64, "q_proj.weight has"),
    ("num_key_value_heads", 4, "k_proj.weight has"),
])
def test_config_json_claims_are_checked_against_the_weights(two_layer_dir, tmp_path, key, value, evidence):
    """config.json beside a 2-layer checkpoint claiming other sizes: one line naming the file and the key, in well
    under a second (a million layers used to build for an hour)."""
    import shutil

    from minilora import FastLanguageModel
    directory = tmp_path / "d"
    shutil.copytree(two_layer_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    config[key] = value
    if key == "hidden_size":
        config["head_dim"] = 16  # keep head_dim as it was, so only the width disagrees
    (directory / "config.json").write_text(json.dumps(config))
    with time_limit(1), pytest.raises(ValueError, match=rf"config.json' says {key}={value}, but .*{evidence}"):
        FastLanguageModel.from_pretrained(directory, device="cpu")

"""Saving, checked by the tools people use: PEFT opens the adapter, transformers opens the merged directory and the
GGUF file (gguf-py reads it back too), and minilora refuses an adapter made for another model."""
import json
import os

import numpy as np
import pytest
import torch
from helpers.train import randomize_lora, tiny_model, tiny_tokenizer

from minilora.io.adapters import AdapterMismatchError, load_adapter, save_adapter
from minilora.lora import get_peft_model
from minilora.save import save_gguf, save_pretrained_merged

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama with a trained-looking adapter, its base saved for transformers, and reference logits."""
    d = tmp_path_factory.mktemp("save")
    tok = tiny_tokenizer()
    base = tiny_model(seed=1)
    save_pretrained_merged(base, tok, str(d / "base"), dtype="float32")  # no LoRA yet: the plain base model
    model = tiny_model(seed=1)
    get_peft_model(model, r=4, lora_alpha=8, verbose=False)
    randomize_lora(model)
    model.eval()
    ids = torch.tensor([tok.encode("<|im_start|>user\nMarch 5, 2021<|im_end|>\n<|im_start|>assistant\n")])
    with torch.no_grad():
        ref = model(ids).logits
    return d, tok, model, ids, ref


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_adapter_loads_in_peft_with_the_same_logits(setup):
    d, tok, model, ids, ref = setup
    save_adapter(model, str(d / "adapter"), base_model_name_or_path=str(d / "base"))
    cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    from safetensors import safe_open
    with safe_open(str(d / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in f.keys()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d / "base"), dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, str(d / "adapter")).eval()
    torch.testing.assert_close(hf_logits(pm, ids), ref, atol=1e-5, rtol=1e-5)


def test_adapter_round_trip_in_minilora_and_refusals(setup):
    d, tok, model, ids, ref = setup
    save_adapter(model, str(d / "adapter2"))
    fresh = tiny_model(seed=1)
    load_adapter(fresh, str(d / "adapter2"))
    torch.testing.assert_close(hf_logits(fresh.eval(), ids), ref, atol=1e-6, rtol=1e-6)
    # the same adapter on a model with other layer sizes: a shape mismatch, refused
    with pytest.raises(AdapterMismatchError, match="shape"):
        load_adapter(tiny_model(hidden_size=32, intermediate_size=64), str(d / "adapter2"))
    # on a model with fewer layers: adapter keys that have no place, refused
    with pytest.raises(AdapterMismatchError, match="different model"):
        load_adapter(tiny_model(layers=1), str(d / "adapter2"))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_model(), str(d / "base"))


def test_merged_directory_loads_in_transformers_and_minilora(setup):
    d, tok, model, ids, ref = setup
    save_pretrained_merged(model, tok, str(d / "merged32"), dtype="float32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d / "merged32"), dtype=torch.float32)
    torch.testing.assert_close(hf_logits(hf, ids), ref, atol=1e-5, rtol=1e-5)
    save_pretrained_merged(model, tok, str(d / "merged16"))  # fp16 weights: rounding of 2^-11 relative
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(d / "merged16"), dtype=torch.float32)
    torch.testing.assert_close(hf_logits(hf16, ids), ref, atol=5e-3, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d / "merged16"))
    assert hf_tok.encode("March 5, 2021<|im_end|>") == tok.encode("March 5, 2021<|im_end|>")
    from minilora import FastLanguageModel
    ours, ours_tok = FastLanguageModel.from_pretrained(str(d / "merged32"), device="cpu")
    torch.testing.assert_close(hf_logits(ours, ids), ref, atol=1e-5, rtol=1e-5)
    assert ours_tok.chat_template == tok.chat_template


def _nf4_rounded_reference(model, dtype):
    """What a merged 4-bit model computes, built without the 4-bit file: the merged weights cast to ``dtype``, every
    linear weight but lm_head rounded through minilora's NF4 (double-quantized absmax, as bitsandbytes stores it)."""
    from minilora.quant.blockwise import dequantize_nf4_reference, quantize_nf4
    from minilora.save import merged_state_dict, quantizable_weights
    sd = merged_state_dict(model, dtype)
    for k in quantizable_weights(model, sd):
        sd[k] = dequantize_nf4_reference(quantize_nf4(sd[k], 64, double_quant=True))
    return sd


def test_merged_4bit_is_a_bitsandbytes_4bit_checkpoint(setup, tmp_path):
    """transformers + bitsandbytes load merged_4bit as a 4-bit model (Linear4bit layers, on a CPU) holding exactly the
    merged-then-NF4-rounded weights (dequantized by bitsandbytes itself: equal bit for bit). Logits: bitsandbytes'
    CPU 4-bit matmul computes at about bf16 precision (measured: 0.012 max on logits of |max| 1.8, as much as running
    the reference under bf16 autocast), so the tolerance is 0.03, ten times below what the 4-bit rounding moves
    them (0.32). minilora's own loader reads the file back too (dequantized), equal to the reference to 1e-5."""
    bnb = pytest.importorskip("bitsandbytes")
    d, tok, model, ids, ref = setup
    save_pretrained_merged(model, tok, str(tmp_path / "m4"), save_method="merged_4bit", dtype="float32")
    cfg = json.loads((tmp_path / "m4" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "bitsandbytes" and cfg["load_in_4bit"] and cfg["bnb_4bit_quant_type"] == "nf4"
    assert cfg["bnb_4bit_use_double_quant"] and cfg["bnb_4bit_compute_dtype"] == "float32"
    from safetensors.torch import load_file
    sd = load_file(str(tmp_path / "m4" / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    assert sd[name].dtype == torch.uint8 and sd[name].shape[1] == 1
    assert {f"{name}.{p}" for p in ("absmax", "nested_absmax", "nested_quant_map", "quant_map",
                                    "quant_state.bitsandbytes__nf4")} <= set(sd)
    blob = json.loads(bytes(sd[f"{name}.quant_state.bitsandbytes__nf4"].tolist()))
    assert blob["quant_type"] == "nf4" and blob["blocksize"] == 64 and blob["dtype"] == "float32"
    assert sd["model.embed_tokens.weight"].dtype == torch.float32  # not a linear layer: stays 16-bit

    reference = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(str(d / "base")), dtype=torch.float32)
    reference.load_state_dict({k: v.float() for k, v in _nf4_rounded_reference(model, torch.float32).items()},
                              strict=False)
    reference.tie_weights()
    want = hf_logits(reference.eval(), ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m4"), device_map="cpu")
    assert isinstance(hf.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    rounded = _nf4_rounded_reference(model, torch.float32)
    for layer_name, layer in hf.named_modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            assert torch.equal(w.float(), rounded[f"{layer_name}.weight"]), layer_name
    got = hf_logits(hf.eval(), ids).float()
    torch.testing.assert_close(got, want, atol=0.03, rtol=0)
    assert (want - ref).abs().max() > 0.3  # rounding to 4 bits really happened, and moves logits 10x the tolerance

    from minilora import FastLanguageModel
    ours, _ = FastLanguageModel.from_pretrained(str(tmp_path / "m4"), device="cpu", dtype="float32")
    torch.testing.assert_close(hf_logits(ours, ids), want, atol=1e-5, rtol=1e-5)


def test_merged_4bit_is_about_4_bits_per_quantized_weight(tmp_path):
    """4 bits per code + 8 bits per 64-value block (the absmax codes) + 32 bits per 256 blocks + a fixed ~1.3 KB per
    weight (the two maps and the JSON blob): 4.13 bits per weight for layers of this size, against 16."""
    from helpers.train import tiny_model
    model = tiny_model(seed=2, hidden_size=256, intermediate_size=1024, layers=1)
    save_pretrained_merged(model, None, str(tmp_path / "m4"), save_method="merged_4bit", dtype="float16")
    save_pretrained_merged(model, None, str(tmp_path / "m16"), save_method="merged_16bit", dtype="float16")
    from safetensors import safe_open

    from minilora.save import merged_state_dict, quantizable_weights
    names = quantizable_weights(model, merged_state_dict(model))
    params = sum(p.numel() for n, p in model.named_parameters() if f"{n}" in names)
    with safe_open(str(tmp_path / "m4" / "model.safetensors"), "pt") as f:
        nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                     if k.split(".weight")[0] + ".weight" in names)
    bits = 8 * nbytes / params
    assert 4.1 < bits < 4.3, bits
    size4 = (tmp_path / "m4" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "m16" / "model.safetensors").stat().st_size
    assert size4 < 0.6 * size16  # embeddings stay 16-bit in both


@pytest.mark.parametrize("quant, atol", [("f32", 1e-5), ("f16", 5e-3), ("q8_0", 0.06)])
def test_gguf_export_reads_back_in_gguf_and_transformers(setup, quant, atol):
    """Tolerances: F16 weights round at 2^-11 relative; Q8_0 stores 8-bit codes per 32 values with an fp16 scale
    (~0.4% of each block's largest value), which moves these logits (|max| ~2) by up to ~0.03."""
    d, tok, model, ids, ref = setup
    path = d / f"model-{quant}.gguf"
    save_gguf(model, tok, str(path), quant)
    import gguf
    reader = gguf.GGUFReader(str(path))
    names = {t.name: t for t in reader.tensors}
    assert names["blk.0.attn_q.weight"].tensor_type.name == quant.upper()
    assert names["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    from minilora.io.gguf import load_gguf
    cfg, sd, meta = load_gguf(path)
    assert meta["tokenizer.chat_template"] == tok.chat_template and cfg["num_hidden_layers"] == 2
    q = model.model.layers[1].self_attn.q_proj
    want_q = (q.base_layer.weight + q.delta_weight()).detach()
    torch.testing.assert_close(sd["model.layers.1.self_attn.q_proj.weight"], want_q, atol=atol * 0.2, rtol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file=path.name, dtype=torch.float32)
    torch.testing.assert_close(hf_logits(hf, ids), ref, atol=atol, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d), gguf_file=path.name)
    text = "<|im_start|>user\nMar 5 2021<|im_end|>"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_bad_save_inputs_leave_nothing_half_written(setup, tmp_path):
    d, tok, model, ids, ref = setup
    with pytest.raises(ValueError, match="save_method"):
        save_pretrained_merged(model, tok, str(tmp_path / "x"), save_method="merged_8bit")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="existing file"):
        save_pretrained_merged(model, tok, str(tmp_path / "file"))
    with pytest.raises(ValueError, match="quantization"):
        save_gguf(model, tok, str(tmp_path / "m.gguf"), "q4_k_m")

    class Boom(Exception):
        pass

    class BadTokenizer:
        def save_pretrained(self, directory):
            raise Boom()

    with pytest.raises(Boom):
        save_pretrained_merged(model, BadTokenizer(), str(tmp_path / "half"))
    assert not (tmp_path / "half").exists()
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no temporary directories left behind
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(tiny_model(), str(tmp_path / "a"))
    assert np.isfinite(ref.numpy()).all()

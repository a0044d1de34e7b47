"""8-bit wiring: the trainer's optim="adamw_8bit" (8-bit states, resume continues exactly through the safetensors
checkpoint), `minilora train --optim adamw_8bit`, and `FastLanguageModel.from_pretrained(..., load_in_8bit=True)`."""
import json

import pytest
import torch
from helpers.train import tiny_model, tiny_tokenizer

from minilora import FastLanguageModel
from minilora.cli import main
from minilora.linear8bit import Linear8bit
from minilora.lora import LoraLinear, get_peft_model
from minilora.save import save_pretrained_merged
from minilora.train import AdamW8bit, Example, Trainer, TrainingArguments

# hidden 64, r 64: each lora_A (64, 64) has 4096 values → 8-bit states; k/v's lora_B (32, 64) → 32-bit states


def lora_model():
    torch.manual_seed(123)
    m = tiny_model(seed=0, vocab_size=64)
    get_peft_model(m, r=64, lora_alpha=64, verbose=False, random_state=0)
    return m


def dataset(n=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 64, (10,), generator=g).tolist()
        out.append(Example(ids, [-100] * 3 + ids[3:]))
    return out


def run(tmp_path, name, stop_after=None, resume=None):
    model = lora_model()
    args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=2, max_steps=5,
                             learning_rate=1e-2, warmup_steps=1, progress_bar=False, seed=1, save_steps=2,
                             optim="adamw_8bit")
    tr = Trainer(model, args, dataset())
    tr.train(resume_from_checkpoint=resume, stop_after=stop_after)
    return tr, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_trainer_uses_8bit_states_and_resumes_exactly(tmp_path):
    full, w_full = run(tmp_path, "full")
    assert isinstance(full.optimizer, AdamW8bit)
    kinds = {("8-bit" if "exp_avg_codes" in st else "32-bit") for st in full.optimizer.state.values()}
    assert kinds == {"8-bit", "32-bit"}  # large tensors 8-bit, small ones 32-bit (min_8bit_size = 4096)
    run(tmp_path, "cut", stop_after=3)  # the last checkpoint is step 2
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "cut" / "checkpoint-2" / "optimizer.safetensors"))
    assert any(k.endswith("::exp_avg_codes") and v.dtype == torch.uint8 for k, v in saved.items())
    torch.manual_seed(999)
    resumed, w_resumed = run(tmp_path, "cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert [r["loss"] for r in resumed.log_history] == [r["loss"] for r in full.log_history]
    for n in w_full:
        assert torch.equal(w_full[n], w_resumed[n]), n


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny8") / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(d), dtype="float32")
    return d


def test_cli_train_with_adamw_8bit(tiny_dir, tmp_path):
    out = tmp_path / "out"
    rc = main(["train", "--model_name", str(tiny_dir), "--max_steps", "2", "--per_device_train_batch_size", "2",
               "--eval_examples", "2", "--output_dir", str(out), "--optim", "adamw_8bit", "--no_progress"])
    assert rc == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_from_pretrained_load_in_8bit(tiny_dir):
    ref, tok = FastLanguageModel.from_pretrained(str(tiny_dir), dtype="float32", device="cpu")
    model, _ = FastLanguageModel.from_pretrained(str(tiny_dir), dtype="float32", device="cpu", load_in_8bit=True)
    layers = [m for m in model.modules() if isinstance(m, Linear8bit)]
    assert len(layers) == 7 * model.config.num_hidden_layers and not isinstance(model.lm_head, Linear8bit)
    ids = torch.tensor([tok.encode("March 5, 2021")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0.05, atol=0.05)
    FastLanguageModel.get_peft_model(model, r=4, verbose=False)
    assert all(isinstance(m.base_layer, Linear8bit) and m.lora_A.weight.dtype == torch.float32
               for m in model.modules() if isinstance(m, LoraLinear))
    with pytest.raises(ValueError, match="exclusive"):
        FastLanguageModel.from_pretrained(str(tiny_dir), load_in_4bit=True, load_in_8bit=True)

"""`minilora train` end to end on a tiny setup, its argument checks, `minilora chat`, and Unsloth's QLoRA check
rebuilt on the real SmolLM2: a model trained on one fact answers it after training and after merging, not before."""
import json

import pytest
import torch
from helpers.train import tiny_model, tiny_tokenizer

from minilora.cli import build_parser, main
from minilora.save import save_pretrained_merged

UNSLOTH_CLI_ARGS = ["model_name", "max_seq_length", "dtype", "load_in_4bit", "dataset", "r", "lora_alpha",
                    "lora_dropout", "bias", "use_gradient_checkpointing", "random_state", "use_rslora",
                    "per_device_train_batch_size", "gradient_accumulation_steps", "warmup_steps", "max_steps",
                    "learning_rate", "optim", "weight_decay", "lr_scheduler_type", "seed", "packing", "logging_steps",
                    "output_dir", "save_model", "save_method", "save_gguf", "save_path", "quantization",
                    "raw_text_file", "chunk_size", "stride", "push_model", "hub_path", "hub_token"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinybase") / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(d), dtype="float32")
    return d


def test_every_unsloth_cli_argument_exists_and_is_explained():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    for name in UNSLOTH_CLI_ARGS:
        assert name in actions, name
        assert actions[name].help and len(actions[name].help) > 20, name
    assert "not available" in actions["hub_token"].help


def test_train_end_to_end_tiny(tiny_dir, tmp_path, capsys):
    """Dates task, QLoRA on a tiny model, 3 steps, accumulation 2, save the adapter and a GGUF."""
    out = tmp_path / "out"
    rc = main(["train", "--model_name", str(tiny_dir), "--max_steps", "3", "--per_device_train_batch_size", "2",
               "--gradient_accumulation_steps", "2", "--eval_examples", "3", "--output_dir", str(out),
               "--save_model", "--save_method", "lora", "--save_gguf", "--quantization", "f16",
               "--save_path", str(tmp_path / "saved"), "--no_progress", "--use_gradient_checkpointing", "unsloth"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "before fine-tuning: 0/3" in text and "after fine-tuning:" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["held_out"] == 3
    assert (tmp_path / "saved" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "saved" / "model-f16.gguf").is_file()
    assert len((out / "train_log.csv").read_text().splitlines()) == 4


def test_train_on_a_json_file_and_raw_text(tiny_dir, tmp_path):
    recs = [{"instruction": "Say the year", "input": f"It is {y}.", "output": str(y)} for y in range(2000, 2010)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    base = ["train", "--model_name", str(tiny_dir), "--load_in_4bit", "false", "--max_steps", "2",
            "--no_progress", "--output_dir", str(tmp_path / "o")]
    assert main(base + ["--dataset", str(tmp_path / "d.json"), "--packing"]) == 0
    base.append("--overwrite_output_dir")  # a second run in the same directory replaces the first one's files
    (tmp_path / "t.txt").write_text("March 5, 2021 is 2021-03-05. " * 20)
    assert main(base + ["--raw_text_file", str(tmp_path / "t.txt"), "--chunk_size", "16", "--stride", "8",
                        "--save_model", "--save_method", "merged_16bit", "--save_path", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()


@pytest.mark.parametrize("extra, match", [
    (["--save_method", "merged_8bit"], "invalid choice"),
    (["--push_model"], "not available"),
    (["--max_steps", "0"], "positive integer"),
    (["--output_dir", "FILE"], "is an existing file"),
    (["--dataset", "MISSING.json"], "does not exist"),
    (["--dataset", "EMPTY.json"], "no records"),
    (["--dataset", "NOFIELD.json"], "lacks the text field"),
])
def test_bad_command_lines(tiny_dir, tmp_path, capsys, extra, match):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "EMPTY.json").write_text("[]")
    (tmp_path / "NOFIELD.json").write_text('[{"instruction": "x"}]')
    extra = [str(tmp_path / e) if e.isupper() or e.endswith(".json") else e for e in extra]
    rc = main(["train", "--model_name", str(tiny_dir), "--max_steps", "1", "--no_progress",
               "--output_dir", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc in (1, 2) and match in err and err.startswith("minilora: error: ") and err.count("\n") == 1
    assert not (tmp_path / "o" / "summary.json").exists()


def test_chat_one_shot(tiny_dir, capsys):
    assert main(["chat", "--model_name", str(tiny_dir), "--prompt", "March 5, 2021", "--max_new_tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # a random tiny model may well answer in whitespace


@pytest.mark.slow
def test_qlora_learns_one_fact_and_keeps_it_after_merging(tmp_path):
    """Unsloth's QLoRA check, rebuilt on SmolLM2-135M: before training it does not know the date; after a few
    steps on that one fact it answers it, and so does the merged 16-bit model reloaded from disk."""
    from minilora import FastLanguageModel
    from minilora.train import Trainer, TrainingArguments, build_examples
    from minilora.train.inference import dense_weights

    question, answer = "What day was I born?", "I was born on 1987-07-14."
    model, tok = FastLanguageModel.from_pretrained("smollm2", load_in_4bit=True, device="cpu")

    def ask(m):
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=False)
        with dense_weights(m):
            out = m.generate(ids, max_new_tokens=16, eos_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    assert "1987-07-14" not in ask(model)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False,
                                             verbose=False)
    exs = build_examples([{"instruction": question, "output": answer}], tok, 64)
    Trainer(model, TrainingArguments(output_dir=str(tmp_path / "o"), per_device_train_batch_size=1,
                                     gradient_accumulation_steps=1, max_steps=12, learning_rate=3e-3,
                                     warmup_steps=0, progress_bar=False), exs).train()
    assert "1987-07-14" in ask(model)
    save_pretrained_merged(model, tok, str(tmp_path / "merged"), dtype="float32")
    merged, _ = FastLanguageModel.from_pretrained(str(tmp_path / "merged"), device="cpu")
    assert "1987-07-14" in ask(merged)


def test_chat_never_prints_an_empty_reply_for_nan_logits(tiny_dir, tmp_path, capsys):
    """Finite weights whose activations overflow (a final norm of 3e38) give inf/NaN logits: chat printed an empty
    reply and exited 0. Now one line and exit 1."""
    import shutil

    from safetensors.torch import load_file, save_file
    shutil.copytree(tiny_dir, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], 3e38)
    save_file(tensors, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    assert main(["chat", "--model_name", str(tmp_path / "m"), "--prompt", "March 5, 2021"]) == 1
    captured = capsys.readouterr()
    assert "logits are NaN or inf" in captured.err and captured.err.count("\n") == 1

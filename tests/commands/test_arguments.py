"""Command-line arguments are checked before any model loads, every error reaches the terminal as one line with
exit code 2 (usage) or 1 (runtime), and --debug / MINILORA_DEBUG=1 show the traceback instead."""
import json

import pytest
from helpers.train import tiny_model, tiny_tokenizer

from minilora.cli import main
from minilora.save import save_pretrained_merged


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinyargs") / "base"
    save_pretrained_merged(tiny_model(seed=2), tiny_tokenizer(), str(d), dtype="float32")
    return d


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test: the arguments must be refused first."""
    from minilora import FastLanguageModel

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(FastLanguageModel, "from_pretrained", staticmethod(refuse))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("minilora: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, match", [
    (["--lora_alpha", "0"], "--lora_alpha"), (["--lora_alpha", "-1"], "--lora_alpha"),
    (["--lora_alpha", "nan"], "--lora_alpha"), (["--lora_alpha", "inf"], "--lora_alpha"),
    (["--learning_rate", "nan"], "--learning_rate"), (["--learning_rate", "-1"], "--learning_rate"),
    (["--learning_rate", "inf"], "--learning_rate"), (["--learning_rate", "0"], "--learning_rate"),
    (["--warmup_steps", "-1"], "--warmup_steps"), (["--save_steps", "-1"], "--save_steps"),
    (["--weight_decay", "nan"], "--weight_decay"), (["--weight_decay", "-0.1"], "--weight_decay"),
    (["--lora_dropout", "1"], "--lora_dropout"), (["--r", "0"], "--r"), (["--max_steps", "0"], "--max_steps"),
    (["--seed", "-1"], "--seed"), (["--eval_examples", "-2"], "--eval_examples"),
    (["--learning_rate", "fast"], "expected a number"),
    (["--stride", "8"], "no effect without --raw_text_file"),
    (["--save_method", "lora"], "no effect without --save_model"),
    (["--quantization", "f16"], "no effect without --save_gguf"),
    (["--model_name", "no-such-model"], "neither a file nor a directory"),
    (["--raw_text_file", "MISSING.txt"], "does not exist"),
    (["--raw_text_file", "T.txt", "--chunk_size", "999"], "longer than --max_seq_length"),
    (["--raw_text_file", "T.txt", "--chunk_size", "16", "--stride", "32"], "larger than --chunk_size"),
    (["--raw_text_file", "T.txt", "--dataset", "dates"], "pass one of them"),
    (["--dataset", "D.json", "--eval_examples", "3"], "outside the bundled dates task"),
])
def test_train_arguments_are_refused_before_loading(tmp_path, capsys, no_loading, extra, match):
    (tmp_path / "T.txt").write_text("some text " * 50)
    (tmp_path / "D.json").write_text("[]")
    extra = [str(tmp_path / e) if e in ("MISSING.txt", "T.txt", "D.json") else e for e in extra]
    assert main(["train", "--output_dir", str(tmp_path / "o"), *extra]) == 2
    assert match in one_line_error(capsys)


@pytest.mark.parametrize("extra, match", [
    (["--top_p", "2"], "--top_p"), (["--top_p", "0"], "--top_p"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--max_new_tokens", "0"], "--max_new_tokens"),
    (["--top_p", "0.9"], "only matters when sampling"), (["--seed", "1"], "only matters when sampling"),
])
def test_chat_arguments_are_refused_before_loading(capsys, no_loading, extra, match):
    assert main(["chat", "--prompt", "hi", *extra]) == 2
    assert match in one_line_error(capsys)


def test_runtime_errors_are_one_line_with_exit_1(tmp_path, capsys):
    d = tmp_path / "weird"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "no_such_arch", "architectures": ["NoSuch"]}))
    assert main(["train", "--model_name", str(d), "--output_dir", str(tmp_path / "o"), "--no_progress"]) == 1
    assert "no_such_arch" in one_line_error(capsys)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    d = tmp_path / "weird"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    argv = ["train", "--model_name", str(d), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="no_such_arch"):
        main([*argv, "--debug"])
    with pytest.raises(ValueError, match="no_such_arch"):
        main(["--debug", *argv])
    monkeypatch.setenv("MINILORA_DEBUG", "1")
    with pytest.raises(ValueError, match="no_such_arch"):
        main(argv)


def test_float16_lora_training_runs(tiny_dir, tmp_path):
    """--dtype float16 without 4-bit: adapters in fp32, autocast and loss scaling (crashed with 'Attempting to
    unscale FP16 gradients')."""
    out = tmp_path / "o"
    assert main(["train", "--model_name", str(tiny_dir), "--dtype", "float16", "--load_in_4bit", "false",
                 "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_examples", "0",
                 "--no_progress", "--output_dir", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_raw_text_with_default_chunking_trains(tiny_dir, tmp_path):
    (tmp_path / "t.txt").write_text("March 5, 2021 is 2021-03-05. " * 40)
    out = tmp_path / "o"
    assert main(["train", "--model_name", str(tiny_dir), "--raw_text_file", str(tmp_path / "t.txt"),
                 "--max_seq_length", "32", "--load_in_4bit", "false", "--max_steps", "1", "--no_progress",
                 "--output_dir", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 1


def test_errors_from_outside_minilora_point_to_debug(monkeypatch, capsys):
    from minilora import FastLanguageModel

    def broken(*a, **k):
        raise IndexError("index 7 is out of bounds")
    monkeypatch.setattr(FastLanguageModel, "from_pretrained", staticmethod(broken))
    assert main(["chat", "--prompt", "hi"]) == 1
    err = one_line_error(capsys)
    assert "IndexError" in err and "--debug" in err

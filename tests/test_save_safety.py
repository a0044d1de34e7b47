"""Saves that cannot destroy: a save never replaces what the model was loaded from, never replaces a non-empty
directory unless asked, replaces it as a whole when asked, and a save killed at any moment leaves the target whole
(old or new) with leftovers that no loader picks up and that the next save removes."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers.train import randomize_lora, tiny_model, tiny_tokenizer

from minilora import FastLanguageModel
from minilora.io.adapters import save_adapter
from minilora.io.atomic import SaveTargetError, clean_leftovers, leftovers, recover, write_dir
from minilora.lora import get_peft_model
from minilora.save import save_gguf, save_pretrained_merged

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety") / "base"
    save_pretrained_merged(tiny_model(seed=3), tiny_tokenizer(), str(d), dtype="float32")
    return d


def lora_on(model):
    get_peft_model(model, r=2, lora_alpha=4, verbose=False)
    return randomize_lora(model)


def test_saving_over_the_loaded_model_directory_is_refused(base_dir, tmp_path):
    model, tok = FastLanguageModel.from_pretrained(str(base_dir), device="cpu")
    lora_on(model)
    before = sorted(os.listdir(base_dir))
    for method in ("merged_16bit", "lora"):
        with pytest.raises(SaveTargetError, match="loaded from"):
            save_pretrained_merged(model, tok, str(base_dir), method, overwrite=True)
        with pytest.raises(SaveTargetError, match="contains"):  # an ancestor of the model's files
            save_pretrained_merged(model, tok, str(base_dir.parent), method, overwrite=True)
    with pytest.raises(SaveTargetError, match="loaded from"):
        save_adapter(model, str(base_dir), overwrite=True)
    with pytest.raises(SaveTargetError, match="loaded from"):  # through a symbolic link too
        os.symlink(base_dir, tmp_path / "link")
        save_pretrained_merged(model, tok, str(tmp_path / "link"), overwrite=True)
    assert sorted(os.listdir(base_dir)) == before
    # a new sub-directory of the model directory destroys nothing: allowed
    save_pretrained_merged(model, tok, str(base_dir / "adapter"), "lora")
    FastLanguageModel.from_pretrained(str(base_dir), device="cpu")


def test_saving_over_the_loaded_gguf_is_refused(tiny_gguf):
    path, _ = tiny_gguf()
    model, _ = FastLanguageModel.from_pretrained(str(path), device="cpu")
    size = path.stat().st_size
    with pytest.raises(SaveTargetError, match="loaded from"):
        save_gguf(model, tiny_tokenizer(), str(path), overwrite=True)
    with pytest.raises(SaveTargetError, match="contains"):
        save_pretrained_merged(model, tiny_tokenizer(), str(path.parent), overwrite=True)
    assert path.stat().st_size == size


def test_a_loaded_adapter_directory_is_protected_as_well_as_its_base(base_dir, tmp_path):
    model, tok = FastLanguageModel.from_pretrained(str(base_dir), device="cpu")
    lora_on(model)
    save_adapter(model, str(tmp_path / "ad"), base_model_name_or_path=str(base_dir))
    loaded, _ = FastLanguageModel.from_pretrained(str(tmp_path / "ad"), device="cpu")
    for target in (tmp_path / "ad", base_dir):
        with pytest.raises(SaveTargetError, match="loaded from"):
            save_adapter(loaded, str(target), overwrite=True)


def test_non_empty_directory_needs_overwrite_and_is_then_replaced_whole(tmp_path):
    """A merged save over an earlier LoRA save must not leave the adapter files (they would be loaded instead)."""
    tok = tiny_tokenizer()
    model = lora_on(tiny_model(seed=4))
    target = tmp_path / "out"
    save_pretrained_merged(model, tok, str(target), "lora", base_model_name_or_path="somewhere")
    assert (target / "adapter_config.json").is_file()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained_merged(model, tok, str(target), "merged_16bit", dtype="float32")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_adapter(model, str(target))
    assert (target / "adapter_config.json").is_file()  # the refusal changed nothing
    save_pretrained_merged(model, tok, str(target), "merged_16bit", dtype="float32", overwrite=True)
    assert not (target / "adapter_config.json").exists() and not (target / "adapter_model.safetensors").exists()
    merged, _ = FastLanguageModel.from_pretrained(str(target), device="cpu")
    ids = torch.tensor([tok.encode("March 5, 2021")])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=1e-5)
    # an empty existing directory is not data: no flag needed
    (tmp_path / "empty").mkdir()
    save_adapter(model, str(tmp_path / "empty"))
    # a GGUF file is a save target too
    save_gguf(model, tok, str(tmp_path / "m.gguf"), "f32")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_gguf(model, tok, str(tmp_path / "m.gguf"), "f32")
    save_gguf(model, tok, str(tmp_path / "m.gguf"), "f32", overwrite=True)


KILLED_SAVE = textwrap.dedent("""
    import os, shutil, sys, time
    sys.path.insert(0, {tests!r})
    from helpers.train import randomize_lora, tiny_model, tiny_tokenizer
    from minilora.lora import get_peft_model
    from minilora.save import save_pretrained_merged, save_gguf
    import minilora.io.atomic as atomic

    target, moment, ready = sys.argv[1], sys.argv[2], sys.argv[3]

    def hang():
        open(ready, "w").close()
        time.sleep(120)

    model = tiny_model(seed=5)
    get_peft_model(model, r=2, lora_alpha=4, verbose=False)
    randomize_lora(model, seed=5)
    tok = tiny_tokenizer()
    if moment == "while writing":           # the tokenizer files are the last thing a directory save writes
        save_tok = tok.save_pretrained
        tok.save_pretrained = lambda d: (save_tok(d), hang())
    elif moment == "after the swap":        # the old version is being deleted
        atomic.shutil.rmtree = lambda *a, **k: hang()
    elif moment == "between two renames":   # a system without an atomic exchange
        atomic._exchange = lambda a, b: False
        real_replace = atomic.os.replace
        def replace(a, b):
            real_replace(a, b)
            if ".previous-" in b:
                hang()
        atomic.os.replace = replace
    if target.endswith(".gguf"):
        import numpy as np
        import gguf
        real_close = gguf.GGUFWriter.close
        gguf.GGUFWriter.close = lambda self: (real_close(self), hang())
        save_gguf(model, tok, target, "f32", overwrite=True)
    else:
        save_pretrained_merged(model, tok, target, "merged_16bit", dtype="float32", overwrite=True)
""")


def kill_a_save(tmp_path, target, moment):
    script = tmp_path / "save.py"
    script.write_text(KILLED_SAVE.format(tests=TESTS))
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(target), moment, str(ready)], env=env)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None, "the save process ended before reaching the kill point"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def logits(model, tok):
    ids = torch.tensor([tok.encode("March 5, 2021")])
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("moment", ["while writing", "after the swap", "between two renames"])
def test_a_killed_directory_save_leaves_old_or_new_and_the_next_save_cleans_up(tmp_path, moment):
    tok = tiny_tokenizer()
    old = tiny_model(seed=6)
    target = tmp_path / "model"
    save_pretrained_merged(old, tok, str(target), dtype="float32")
    new = lora_on(tiny_model(seed=5))
    randomize_lora(new, seed=5)
    kill_a_save(tmp_path, target, moment)
    assert leftovers(str(target)), "the kill point was reached, so something must be left over"
    if moment == "between two renames":
        assert not target.exists()  # the one window two renames cannot close: the next load or save recovers
        assert recover(str(target)) == str(target)
    assert all(os.path.basename(p).startswith(".") for p in leftovers(str(target)))
    loaded, _ = FastLanguageModel.from_pretrained(str(target), device="cpu")
    got = logits(loaded, tok)
    want = logits(new, tok) if moment == "after the swap" else logits(old, tok)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the next save of the same target removes every leftover
    save_pretrained_merged(old, tok, str(target), dtype="float32", overwrite=True)
    assert leftovers(str(target)) == []
    assert sorted(os.listdir(tmp_path)) == ["model", "ready", "save.py"]


def test_a_killed_gguf_save_is_never_taken_for_the_model(tmp_path):
    tok = tiny_tokenizer()
    folder = tmp_path / "dir"
    save_gguf(tiny_model(seed=6), tok, str(folder / "model.gguf"), "f32")
    kill_a_save(tmp_path, folder / "model.gguf", "while writing gguf")
    left = leftovers(str(folder / "model.gguf"))
    assert len(left) == 1 and os.path.basename(left[0]).startswith(".model.gguf.partial-")
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["model.gguf"]  # a glob never matches the leftover
    loaded, _ = FastLanguageModel.from_pretrained(str(folder), device="cpu")  # the one GGUF of the directory
    torch.testing.assert_close(logits(loaded, tok), logits(tiny_model(seed=6), tok), atol=1e-5, rtol=1e-5)
    save_gguf(tiny_model(seed=6), tok, str(folder / "model.gguf"), "f32", overwrite=True)
    assert leftovers(str(folder / "model.gguf")) == []


def test_recover_only_restores_an_unambiguous_previous_version(tmp_path):
    target = tmp_path / "t"
    (tmp_path / ".t.previous-abc").mkdir()
    (tmp_path / ".t.previous-abc" / "f").write_text("old")
    assert recover(str(target)) == str(target) and (target / "f").read_text() == "old"
    assert recover(str(target)) is None  # the target exists: nothing to do
    write_dir(str(target), lambda d: open(os.path.join(d, "f"), "w").write("new"))
    assert (target / "f").read_text() == "new" and clean_leftovers(str(target)) == []
    assert json.loads(json.dumps(sorted(os.listdir(tmp_path)))) == ["t"]


def test_two_processes_saving_to_one_path_never_break_each_other(tmp_path):
    """Each save stages under its own process id and cleans only the leftovers of writers that are gone."""
    import subprocess
    import sys
    script = ("import sys\nfrom minilora.io.atomic import write_dir\n"
              "def fill(tag):\n"
              "    def f(tmp):\n"
              "        for i in range(20):\n"
              "            open(f'{tmp}/part{i}', 'w').write(tag)\n"
              "    return f\n"
              "for n in range(12):\n"
              "    write_dir(sys.argv[1], fill(sys.argv[2]))\n")
    target = str(tmp_path / "model")
    procs = [subprocess.Popen([sys.executable, "-c", script, target, tag], stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    contents = {(tmp_path / "model" / f"part{i}").read_text() for i in range(20)}
    assert len(contents) == 1  # one whole save, never a mix of the two
    assert leftovers(target) == []


def test_a_live_writers_copy_is_kept_whatever_the_folder_is_called(tmp_path):
    """The writer's id is read after the copy's own prefix: a folder named like a staging copy no longer made a live
    writer's set-aside copy look like a dead one's (and so removable)."""
    folder = tmp_path / "runs.partial-7"
    folder.mkdir()
    live = folder / f".model.previous-{os.getpid()}-x1"
    live.mkdir()
    dead = folder / ".model.previous-abc"
    dead.mkdir()
    assert leftovers(str(folder / "model")) == [str(dead)]

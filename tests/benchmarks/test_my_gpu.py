"""The learner's own-GPU command (benchmarks/my_gpu.py): its CPU smoke path end to end, the batch it picks for a
card's memory, the loader the lessons use, and the run recorded with the project."""
import json

import pytest
import torch

from benchmarks import harness, my_gpu


@pytest.mark.parametrize("total_gib, batch", [(79.2, 4), (23.6, 2), (15.7, 1), (11.0, None)])
def test_the_batch_fits_the_card(total_gib, batch):
    """H100 80GB, a 24 GB and a 16 GB card (what torch reports as total_memory), and one too small for six stacks."""
    assert my_gpu.pick_batch(total_gib) == batch


def test_without_a_gpu_it_says_what_to_do(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        my_gpu.main([])
    assert "--smoke" in capsys.readouterr().err


def test_smoke_run_writes_a_result_the_loader_reads(tmp_path, capsys):
    mine = tmp_path / "mine"
    assert my_gpu.main(["--smoke", "--stages", "0,3", "--out", str(mine)]) == 0
    [written] = mine.glob("my-gpu-cpu-*-smoke.json")
    data = harness.load_results(written)  # results schema 1: card, versions, date, commit
    assert data["benchmark"] == "my-gpu" and data["card"].startswith("CPU") and "torch" in data["versions"]
    assert data["command"].startswith("python -m benchmarks.my_gpu --smoke")
    impls = [r["impl"] for r in data["rows"]]
    assert impls == ["HF+PEFT+bnb qlora (checkpointing on)", "HF+PEFT+bnb qlora (checkpointing off)", "lora-bf16",
                     "+ fused-ce"], impls
    assert all(r["reps"] == 3 for r in data["rows"]), "warm-up aside, every stack timed 3 rounds x 1 rep"
    out = capsys.readouterr().out
    assert my_gpu.ladder_table(data).splitlines()[1] in out, "the lessons' table is printed"
    assert "Your ratios to the anchor" in out
    # a smoke run is never taken for a measurement: the loader skips it until it is a real run
    assert my_gpu.my_gpu_results(mine=mine, recorded=tmp_path / "none") == (None, None)
    real = mine / written.name.replace("-smoke", "")
    real.write_text(written.read_text())
    yours, recorded = my_gpu.my_gpu_results(mine=mine, recorded=tmp_path / "none")
    assert yours == json.loads(real.read_text()) and recorded is None
    assert set(my_gpu.ratios(yours)) == {"lora-bf16", "+ fused-ce"}

"""Two real processes (torchrun, gloo, CPU) train exactly like one process with the whole batch.

The same tiny fine-tune (`minilora.parity`: 13 examples with masked prompts of random length, a global
micro-batch of 5 examples split 3 + 2 between the ranks, 2 micro-batches a step, epochs wrapping mid-batch) runs
in this process and in two torchrun ranks, with DDP, FSDP2, and FSDP2 on a 4-bit base with offloaded activation
checkpointing. Tolerances (fp32): losses 1e-6 relative, first-step gradients and final adapters 1e-5 relative
(norm of the difference over the norm). The QLoRA comparison uses SGD: AdamW divides each update by the root of
its own squared gradient, so an element whose gradient is ~0 flips between ±lr on a last-bit difference of the
summation order, which says nothing about the gradients being equal.

Two torchrun launches keep the file's time down: one that is SIGKILLed after its step-2 checkpoint, one that runs
every other 2-rank case in the same two processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")
LOSS_RTOL, TENSOR_RTOL = 1e-6, 1e-5


def torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "minilora.parity", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def one_process(args: list[str]) -> dict:
    from minilora import parity
    return parity.run(parity.parser().parse_args(args))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    out = {"one": one_process(["--save_steps", "2", "--output_dir", str(d / "one")]),
           "one_q": one_process(["--quantize", "--optim", "sgd", "--lr", "0.5", "--output_dir", str(d / "oneq")])}
    killed = torchrun(["--parallel", "fsdp", "--save_steps", "2", "--kill_after", "2", "--output_dir",
                       str(d / "killed"), "--out", str(d / "never.json")], d)
    out["killed_rc"], out["killed_dir"] = killed.returncode, d / "killed"
    out["never_finished"] = (d / "never.json").exists()
    plan = [("ddp", ["--parallel", "ddp"]), ("fsdp", ["--parallel", "fsdp"]),
            ("fsdp_q", ["--parallel", "fsdp", "--quantize", "--optim", "sgd", "--lr", "0.5",
                        "--checkpointing", "offload"]),
            ("resumed", ["--parallel", "fsdp", "--resume", str(d / "killed" / "checkpoint-2")]),
            ("from_one", ["--parallel", "ddp", "--resume", str(d / "one" / "checkpoint-2")])]
    words = []
    for name, args in plan:
        words += [*args, "--output_dir", str(d / name), "--out", str(d / f"{name}.json"), "::"]
    done = torchrun(words[:-1], d)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, _ in plan:
        out[name] = json.loads((d / f"{name}.json").read_text())
    return out


def rel(a, b) -> float:
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_same_training(two: dict, one: dict):
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["trained_tokens"] == one["trained_tokens"]  # the global count, all-reduced
    assert rel(two["losses"], one["losses"]) < LOSS_RTOL, (two["losses"], one["losses"])
    assert set(two["first_grads"]) == set(one["first_grads"])
    for name in one["first_grads"]:
        assert rel(two["first_grads"][name], one["first_grads"][name]) < TENSOR_RTOL, name
    assert set(two["adapter"]) == set(one["adapter"])  # the PEFT names of one process
    for name in one["adapter"]:
        assert rel(two["adapter"][name], one["adapter"][name]) < TENSOR_RTOL, name


def test_rank_slices_are_contiguous_and_cover_the_batch():
    from minilora.train import distributed
    assert [distributed.rank_slice(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [distributed.rank_slice(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [distributed.rank_slice(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def test_the_ranks_saw_uneven_label_counts(runs):
    tokens = runs["ddp"]["rank_tokens"]  # label tokens of each micro-batch (3 steps x 2), rank by rank
    assert len(tokens) == 2 and sum(a != b for a, b in zip(*tokens)) >= 4  # ranks differ in most micro-batches
    per_step = [sum(t[2 * s] + t[2 * s + 1] for t in tokens) for s in range(3)]
    assert per_step == runs["one"]["trained_tokens"]  # together: exactly one process's counts


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(runs, mode):
    assert_same_training(runs[mode], runs["one"])


def test_fsdp_qlora_with_offloaded_checkpointing_trains_like_one_process(runs):
    assert_same_training(runs["fsdp_q"], runs["one_q"])


def test_each_rank_holds_half_of_the_4bit_base(runs):
    from minilora.memory import nf4_bytes
    from minilora.memory.estimate import block_linear_shapes
    from minilora.parity import tiny_config
    cfg = tiny_config()
    base = cfg.num_hidden_layers * sum(nf4_bytes(o * i)["total"] for o, i in block_linear_shapes(cfg).values())
    dense = (cfg.vocab_size * cfg.hidden_size + (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size) * 4
    one_rank = base + dense  # codes, quant state, embedding and norms: everything frozen, in one process
    held = [h["frozen"] for h in runs["fsdp_q"]["held_bytes"]]
    assert all(abs(h - one_rank / 2) <= 16 for h in held), (held, one_rank)  # 1/2, up to FSDP's padding


@pytest.mark.parametrize("name,method,stage", [("ddp", "lora", "ddp"), ("fsdp", "lora", "zero3"),
                                               ("fsdp_q", "qlora", "zero3")])
def test_memory_estimate_per_rank_matches_what_ranks_hold(runs, name, method, stage):
    from minilora.memory import estimate_memory_per_rank
    from minilora.parity import tiny_config
    states = 0 if name == "fsdp_q" else 2  # that run uses SGD (no state), the others AdamW (m and v)
    e = estimate_memory_per_rank(tiny_config(), method, 2, stage, r=8, dtype=torch.float32,
                                 adapter_dtype=torch.float32, optimizer_states=states)
    for held in runs[name]["held_bytes"]:
        pairs = [(held["frozen"] + held["trainable"], e.weights + e.quant_state + e.adapter),
                 (held["gradients"], e.gradients), (held["optimizer"], e.optimizer)]
        for real, predicted in pairs:
            assert abs(real - predicted) <= 0.01 * predicted + 64, (name, held, e)


def test_a_killed_two_rank_run_resumes_like_an_uninterrupted_one(runs):
    assert runs["killed_rc"] != 0 and not runs["never_finished"]  # it really died, after step 2's checkpoint
    assert (runs["killed_dir"] / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert runs["resumed"]["step"] == 3
    assert_same_training_tail(runs["resumed"], runs["one"])


def test_two_ranks_resume_from_a_one_process_checkpoint(runs):
    assert runs["from_one"]["step"] == 3
    assert_same_training_tail(runs["from_one"], runs["one"])


def assert_same_training_tail(resumed: dict, one: dict):
    assert rel(resumed["losses"], one["losses"]) < LOSS_RTOL
    for name in one["adapter"]:
        assert rel(resumed["adapter"][name], one["adapter"][name]) < TENSOR_RTOL, name


def test_one_process_ignores_the_parallel_setting():
    from minilora.train import distributed
    assert distributed.context("fsdp") == distributed.DistContext()
    with pytest.raises(ValueError, match="ddp"):
        distributed.context("zero")


@pytest.mark.slow
def test_smollm2_qlora_fsdp_on_two_ranks_trains_like_one_process(tmp_path):
    """The real CLI on the bundled SmolLM2-135M (4-bit base): 2 steps, a global batch of 4 examples. SGD, so the
    adapter's difference measures the gradients' (see the module docstring on AdamW)."""
    from safetensors.torch import load_file
    common = ["--max_steps", "2", "--global_train_batch_size", "4", "--per_device_train_batch_size", "2",
              "--eval_examples", "0", "--no_progress", "--save_model", "--save_method", "lora", "--optim", "sgd",
              "--learning_rate", "0.1", "--warmup_steps", "0"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    one = subprocess.run([sys.executable, "-m", "minilora", "train", *common, "--output_dir", "one", "--save_path",
                          "one-adapter"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "minilora", "train", *common, "--parallel", "fsdp",
                          "--save_path", "two-adapter"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    made = os.listdir(tmp_path / "outputs")  # no --output_dir: rank 0 names the run directory, rank 1 uses it
    assert len(made) == 1, made
    logs = [json.loads((tmp_path / d / "train_log.json").read_text()) for d in ("one", f"outputs/{made[0]}")]
    assert [r["trained_tokens"] for r in logs[0]] == [r["trained_tokens"] for r in logs[1]]
    assert rel([r["loss"] for r in logs[1]], [r["loss"] for r in logs[0]]) < LOSS_RTOL * 10
    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one-adapter", "two-adapter"))
    assert set(a) == set(b)
    worst = max(rel(b[name].tolist(), a[name].tolist()) for name in a)
    print(f"SmolLM2 2 ranks vs 1: losses {[r['loss'] for r in logs[1]]} vs {[r['loss'] for r in logs[0]]}, "
          f"adapter relative difference at most {worst:.2e}")
    assert worst < TENSOR_RTOL * 10

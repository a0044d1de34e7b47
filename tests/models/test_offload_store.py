"""The offload store: layer inputs in a bounded pool of equal host chunks, then a spill file on disk.

Round trips are bit-exact for any size and dtype, whether a tensor lands in the pool, on disk or in both; the pool
never grows past its budget and wastes at most one chunk's tail per tensor; whatever a tensor held is handed back
when it is brought back or dropped; bad settings get one clear error.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora.models import offload_store
from minilora.models.offload_store import HostChunkPool, OffloadStore

CHUNK = 256  # bytes: small, so a few hundred elements already make several pieces


def store(budget, tmp_path=None):
    return OffloadStore(host_budget_bytes=budget, chunk_bytes=CHUNK, spill_dir=str(tmp_path) if tmp_path else None,
                        pin=False)


def random_tensor(numel, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(numel, generator=g).to(dtype)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5), budget=st.integers(0, 3000),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 99))
def test_round_trip_is_exact_in_the_pool_on_disk_and_across_both(sizes, budget, dtype, seed):
    s = store(budget)
    xs = [random_tensor(n, dtype, seed + i).view(1, n) for i, n in enumerate(sizes)]
    held = [s.put(x) for x in xs]
    assert s.pool.allocated_bytes <= budget
    for x, h in reversed(list(zip(xs, held))):  # the backward's order: last layer first, the one before prefetched
        h.prefetch()
        back = h.fetch()
        assert back.dtype == x.dtype and back.shape == x.shape
        assert torch.equal(back.view(torch.uint8 if dtype != torch.float32 else torch.int32),
                           x.view(torch.uint8 if dtype != torch.float32 else torch.int32))
    assert s.pool.in_use == 0
    if s.spill is not None:
        assert s.spill.in_use == 0 or s.disk_thread.submit(lambda: s.spill.in_use).result() == 0


def test_a_budget_of_zero_sends_everything_to_disk_and_back(tmp_path):
    s = store(0, tmp_path)
    x = random_tensor(1000, torch.float32, 0)
    back = s.put(x).fetch()
    assert torch.equal(back, x)
    stats = s.stats()
    assert stats["host_pool_bytes"] == 0
    assert stats["disk_bytes_written"] == stats["disk_bytes_read"] == x.numel() * 4
    assert list(tmp_path.iterdir()) == []  # the spill file has no name: nothing is left behind


def test_host_bytes_are_the_tensor_rounded_up_to_one_chunk_not_a_power_of_two():
    """The reason for the pool: 2.6 chunks' worth of data takes 3 chunks (a power-of-two block would take 4)."""
    s = store(10**9)
    nbytes = int(2.6 * CHUNK) // 4 * 4
    held = s.put(random_tensor(nbytes // 4, torch.float32, 0))
    assert s.pool.in_use == 3 and len(held.pieces) == 3


def test_the_pool_stops_at_its_budget_in_power_of_two_slabs():
    pool = HostChunkPool(CHUNK, 1000, pin=False)
    chunks = [pool.take() for _ in range(5)]
    assert [c is not None for c in chunks] == [True, True, True, False, False]  # 512 + 256 bytes of slabs
    assert pool.allocated_bytes == 768 <= 1000


def test_a_stored_tensor_dropped_without_fetch_gives_its_chunks_and_slots_back(tmp_path):
    s = store(2 * CHUNK, tmp_path)
    h = s.put(random_tensor(300, torch.float32, 0))  # 1200 bytes: 2 chunks in the pool, 3 pieces on disk
    assert s.pool.in_use == 2
    del h
    assert s.pool.in_use == 0
    assert s.disk_thread.submit(lambda: s.spill.in_use).result() == 0


def test_bad_settings_get_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="power of two"):
        HostChunkPool(300, 10**6, pin=False)
    monkeypatch.setenv("MINILORA_OFFLOAD_HOST_GIB", "lots")
    with pytest.raises(ValueError, match="MINILORA_OFFLOAD_HOST_GIB"):
        offload_store.default_host_budget()
    with pytest.raises(ValueError, match="host_budget_gib"):
        offload_store.configure(host_budget_gib=float("nan"))
    s = store(0, tmp_path / "missing")
    with pytest.raises(ValueError, match="MINILORA_OFFLOAD_DIR"):
        s.put(torch.ones(4))


def test_the_default_budget_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MINILORA_OFFLOAD_HOST_GIB", "1.5")
    assert offload_store.default_host_budget() == int(1.5 * 2**30)
    monkeypatch.delenv("MINILORA_OFFLOAD_HOST_GIB")
    available = offload_store.host_available_bytes()
    assert available is None or 0 <= offload_store.default_host_budget() < available


@pytest.mark.gpu
@pytest.mark.parametrize("budget", [0, 3 * 2**20, 2**30])
def test_cuda_round_trip_through_pinned_chunks_and_disk_on_the_side_stream(budget, tmp_path):
    s = OffloadStore(host_budget_bytes=budget, chunk_bytes=2**20, spill_dir=str(tmp_path))
    xs = [torch.randn(3, 1000, 333 + i, device="cuda", dtype=torch.bfloat16) for i in range(4)]
    want = [x.clone() for x in xs]
    held = [s.put(x) for x in xs]
    for x in xs:
        x.fill_(float("nan"))  # the device copies may be overwritten as soon as put returns
    del xs
    for i in reversed(range(len(held))):
        if i:
            held[i - 1].prefetch()
        assert torch.equal(held[i].fetch(), want[i])


def test_the_memory_meter_counts_what_an_offloaded_input_holds_not_the_slab_it_sits_in():
    """The stored layer inputs share 1 GiB slabs: the meter must count each input's bytes, once."""
    from minilora.lora import get_peft_model
    from minilora.memory import measure_activations
    from minilora.models import build_model
    from minilora.models.config import ModelConfig
    cfg = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(build_model(cfg, dtype=torch.float32), r=4, verbose=False).train()
    model.gradient_checkpointing = "offload"
    ids = torch.randint(0, 128, (2, 16))
    report = measure_activations(model, lambda: model(ids, labels=ids))
    inputs = cfg.num_hidden_layers * 2 * 16 * 64 * 4  # one (B, T, C) float32 input per layer
    held = report.held["OffloadedCheckpointBackward"]
    assert inputs <= held < inputs + 32 * 1024  # + the RNG states and RoPE tables each Function keeps

"""The benchmark harness on a CPU with a fake clock: rotation, equal counts, median/range, schema round-trip."""
import json

import pytest

from benchmarks import harness


class FakeClock:
    """A clock that only moves when an implementation says so: each call advances it by that impl's next duration."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def mark(self):
        return self.now

    def elapsed_ms(self, start, end):
        return (end - start) * 1e3

    def impl(self, name, durations_s):
        it = iter(durations_s)

        def fn():
            self.calls.append(name)
            self.now += next(it)
        return fn


def test_rotation_turns_by_one_each_round():
    assert harness.rotation(["a", "b", "c"], 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                    ["a", "b", "c"]]


def test_each_impl_timed_the_same_number_of_times_in_rotated_order():
    clock = FakeClock()
    impls = {n: clock.impl(n, [0.001] * 100) for n in ("a", "b", "c")}
    out = harness.time_rotated(impls, rounds=3, reps=2, warmup=1, clock=clock)
    assert {n: len(s) for n, s in out["samples"].items()} == {"a": 6, "b": 6, "c": 6}
    assert out["orders"] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    warm, timed = clock.calls[:3], clock.calls[3:]
    assert warm == ["a", "b", "c"]
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]


def test_median_and_range_over_all_repetitions():
    clock = FakeClock()
    # warm-up 10 s (must not count), then six timed calls of 1..6 ms in rotated rounds
    impls = {"x": clock.impl("x", [10.0, 0.003, 0.001, 0.006, 0.002, 0.005, 0.004])}
    out = harness.time_rotated(impls, rounds=3, reps=2, warmup=1, clock=clock)
    s = harness.summarize(out["samples"]["x"])
    assert s["reps"] == 6
    assert s["median_ms"] == pytest.approx(3.5)
    assert (s["min_ms"], s["max_ms"]) == (pytest.approx(1.0), pytest.approx(6.0))


def test_fewer_than_three_rounds_refused():
    with pytest.raises(ValueError, match="at least 3 rounds"):
        harness.time_rotated({"a": lambda: None}, rounds=2)


def test_a_failing_impl_is_dropped_and_recorded_not_fatal():
    clock = FakeClock()

    def broken():
        raise RuntimeError("no kernel for this card")
    out = harness.time_rotated({"ok": clock.impl("ok", [0.001] * 10), "bad": broken}, rounds=3, reps=1,
                               clock=clock)
    assert out["errors"] == {"bad": "RuntimeError: no kernel for this card"}
    assert len(out["samples"]["ok"]) == 3 and out["samples"]["bad"] == []


def test_compare_adds_copy_ceiling_and_bandwidth(tmp_path):
    res = harness.Results("unit", "cpu", notes="n", command="pytest", log=lambda *_: None)
    rows = res.compare("op", {"a": lambda: sum(range(100))}, rounds=3, reps=2, nbytes=4096)
    assert [r["impl"] for r in rows] == ["a", harness.COPY_IMPL]
    assert all(r["reps"] == 6 and r["tb_s"] > 0 and r["peak_gib"] is None for r in rows)
    assert rows[1]["pct_of_copy"] == pytest.approx(100.0)


def test_schema_round_trip(tmp_path):
    res = harness.Results("unit", "cpu", notes="round trip", command="pytest", log=lambda *_: None)
    res.add("op", "a", [1.0, 3.0, 2.0], peak=0.5, extra_field=7)
    res.add("op", "b", [], error="out of memory")
    res.extra["provenance"] = "test"
    path = res.write(tmp_path, "unit")
    data = harness.load_results(path)
    assert data["schema"] == harness.SCHEMA and data["benchmark"] == "unit" and data["provenance"] == "test"
    assert "torch" in data["versions"] and data["card"].startswith("CPU") and data["git_commit"]
    a = harness.pick(data, impl="a")
    assert (a["median_ms"], a["min_ms"], a["max_ms"], a["reps"], a["extra_field"]) == (2.0, 1.0, 3.0, 3, 7)
    assert harness.pick(data, impl="b")["median_ms"] is None
    assert harness.spread(a) == "2.000 ms [1.000–3.000]"


def test_speed_word_takes_a_side_only_when_the_ranges_are_apart():
    def row(median, lo, hi, **kw):
        return {"median_ms": median, "min_ms": lo, "max_ms": hi, "reps": 3, **kw}
    assert harness.speed_word(row(1.0, 0.9, 1.1), row(2.0, 1.9, 2.1)) == "faster than"
    assert harness.speed_word(row(2.0, 1.9, 2.1), row(1.0, 0.9, 1.1)) == "slower than"
    # a lower median is not "faster" when the ranges overlap (the recorded NF4 dequant: 0.060 [0.053–0.223] ms
    # against 0.075 [0.073–0.457] ms)
    assert "overlap" in harness.speed_word(row(0.060, 0.053, 0.223), row(0.075, 0.073, 0.457))
    assert "no ranges" in harness.speed_word(row(1.0, 1.0, 1.0, converted=True), row(2.0, 2.0, 2.0))


def test_refuses_another_schema(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"meta": {}, "rows": [{"stage": "x", "step_ms": 1.0}]}))
    with pytest.raises(harness.ResultsSchemaError, match="schema None, but this loader reads schema 1"):
        harness.load_results(old)
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema": 2}))
    with pytest.raises(harness.ResultsSchemaError, match="schema 2"):
        harness.load_results(future)


def test_refuses_inconsistent_rows(tmp_path):
    res = harness.Results("unit", "cpu", command="pytest", log=lambda *_: None)
    res.add("op", "a", [1.0, 2.0])
    data = res.to_dict()
    data["rows"][0]["min_ms"] = 5.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(harness.ResultsSchemaError, match="min_ms <= median_ms <= max_ms"):
        harness.load_results(bad)
    del data["rows"][0]["peak_gib"]
    bad.write_text(json.dumps(data))
    with pytest.raises(harness.ResultsSchemaError, match="lacks \\['peak_gib'\\]"):
        harness.load_results(bad)


def test_pick_names_what_exists():
    data = {"benchmark": "unit", "rows": [{"name": "op", "impl": "a"}]}
    with pytest.raises(KeyError, match="rows \\(name, impl\\): \\[\\('op', 'a'\\)\\]"):
        harness.pick(data, impl="zzz")


def test_every_recorded_result_reads_as_schema_1():
    """The lessons and the benchmarks page read benchmarks/results/*.json through load_results."""
    import pathlib
    files = sorted((pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        data = harness.load_results(path)
        assert data["rows"], path.name


def test_latest_picks_the_newest_date_and_skips_smoke(tmp_path):
    for name in ("e2e-1b-h200-2026-11-27", "e2e-1b-h200-2026-12-01", "e2e-1b-cpu-2026-12-02-smoke",
                 "e2e-8b-h200-2026-12-03"):
        (tmp_path / f"{name}.json").write_text("{}")
    assert harness.latest(tmp_path, "e2e-1b").name == "e2e-1b-h200-2026-12-01.json"
    assert harness.latest(tmp_path, "ctx-mem-8b") is None

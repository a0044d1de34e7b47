"""The one results schema of minilora's benchmarks, and its loader: what `benchmarks.harness.Results` writes and what
the lessons and the benchmarks page read (see harness.py's docstring for the layout).

    {"schema": 1, "benchmark", "card", "versions", "date", "git_commit", "command", "notes",
     "rows": [{"name", "impl", "median_ms", "min_ms", "max_ms", "reps", "peak_gib", ...extras}], ...extras}
"""
from __future__ import annotations

import json
import os
import pathlib

SCHEMA = 1
REQUIRED_TOP = {"schema": int, "benchmark": str, "card": str, "versions": dict, "date": str, "git_commit": str,
                "command": str, "rows": list, "notes": str}
REQUIRED_ROW = ("name", "impl", "median_ms", "min_ms", "max_ms", "reps", "peak_gib")

class ResultsSchemaError(ValueError):
    """A results file that is not schema-1 JSON; the message names the file, the problem and the fix."""


def validate(data, where: str = "results") -> dict:
    fix = "re-record it with the script named in its 'benchmark'/'command' (python -m benchmarks.<script>)"
    if not isinstance(data, dict):
        raise ResultsSchemaError(f"{where}: expected a JSON object, found {type(data).__name__}; {fix}")
    if data.get("schema") != SCHEMA:
        raise ResultsSchemaError(f"{where}: schema {data.get('schema')!r}, but this loader reads schema {SCHEMA} "
                                 f"(a file from an older layout has no 'schema' key); {fix}")
    for key, kind in REQUIRED_TOP.items():
        if key not in data:
            raise ResultsSchemaError(f"{where}: missing top-level key {key!r}; {fix}")
        if not isinstance(data[key], kind):
            raise ResultsSchemaError(f"{where}: {key!r} should be {kind.__name__}, found "
                                     f"{type(data[key]).__name__}; {fix}")
    for i, row in enumerate(data["rows"]):
        here = f"{where}: row {i}"
        if not isinstance(row, dict):
            raise ResultsSchemaError(f"{here} is not an object; {fix}")
        missing = [k for k in REQUIRED_ROW if k not in row]
        if missing:
            raise ResultsSchemaError(f"{here} ({row.get('name')!r}/{row.get('impl')!r}) lacks {missing}; {fix}")
        if not isinstance(row["reps"], int) or row["reps"] < 0:
            raise ResultsSchemaError(f"{here}: reps must be a non-negative integer, found {row['reps']!r}")
        times = [row["min_ms"], row["median_ms"], row["max_ms"]]
        if row["reps"] == 0:
            if any(t is not None for t in times):
                raise ResultsSchemaError(f"{here}: reps is 0 but times are given; set reps to the count timed")
        elif not all(isinstance(t, (int, float)) for t in times) or not times[0] <= times[1] <= times[2]:
            raise ResultsSchemaError(f"{here}: needs min_ms <= median_ms <= max_ms as numbers, found {times}")
        if row["peak_gib"] is not None and not isinstance(row["peak_gib"], (int, float)):
            raise ResultsSchemaError(f"{here}: peak_gib must be a number or null, found {row['peak_gib']!r}")
    return data


def load_results(path: str | os.PathLike) -> dict:
    """Read a results JSON file and check it is schema 1; raises ResultsSchemaError with the fix otherwise."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}: record one with the benchmark script, or pass the "
                                f"path of an existing file in benchmarks/results/")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsSchemaError(f"{path}: not valid JSON ({err}); re-record it or restore it from git") from err
    return validate(data, str(path))


def latest(results_dir: str | os.PathLike, benchmark: str) -> pathlib.Path | None:
    """The newest recorded file of a benchmark (<benchmark>-<card>-<date>.json, smoke runs left out), or None."""
    files = sorted((p for p in pathlib.Path(results_dir).glob(f"{benchmark}-*.json") if "smoke" not in p.stem),
                   key=lambda p: (p.stem.rsplit("-", 3)[-3:], p.stem))
    return files[-1] if files else None


def pick(results: dict, **match) -> dict:
    """The first row whose fields equal every keyword; a KeyError that lists what the file has otherwise."""
    for row in results["rows"]:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    have = sorted({(r.get("name"), r.get("impl")) for r in results["rows"]})
    raise KeyError(f"no row with {match} in {results['benchmark']!r}; rows (name, impl): {have}")


def spread(row: dict) -> str:
    """'median [min–max] ms' for prose and tables."""
    if not row["reps"]:
        return "not measured"
    return f"{row['median_ms']:.3f} ms [{row['min_ms']:.3f}–{row['max_ms']:.3f}]"


def speed_word(mine: dict, base: dict) -> str:
    """'faster than' / 'slower than' from the medians of two timed rows, but only when their [min–max] ranges do
    not overlap: with a few timed runs an overlap is noise, and a row converted from an older file has no range."""
    if mine.get("converted") or base.get("converted"):
        return "not told apart (no ranges recorded) from"
    if mine["max_ms"] >= base["min_ms"] and base["max_ms"] >= mine["min_ms"]:
        return "not told apart (the [min–max] ranges overlap) from"
    return "faster than" if mine["median_ms"] < base["median_ms"] else "slower than"

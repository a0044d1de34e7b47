"""`minilora exercises`: run the workbook's exercise tests and print a progress table per week.

Exercise N.M is the stub ``exercises/weekN/exN_M_<topic>.py`` (you fill it in) checked by
``exercises/weekN/test_exN_M_<topic>.py``. This command runs those tests with pytest, reads pytest's JUnit XML
report, and shows for each exercise how many of its tests pass. ``--solutions`` runs the same tests against the
reference solutions in ``exercises/solutions/`` (what a finished workbook looks like).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..course import Exercise, discover_exercises, exercise_marker, find_checkout

TEST_MODULE = re.compile(r"test_ex(\d+)_(\d+)_\w+")


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    not_implemented: int = 0          # failures raised by a stub that is still a stub
    timed_out: bool = False           # stopped after running longer than the time limit
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    @property
    def status(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.total == 0:
            return "no tests"
        if self.passed == self.total:
            return "done"
        if self.passed:
            return "in progress"
        if self.errors:
            return "error"
        if self.failed and self.not_implemented == self.failed:
            return "not started"
        return "failing"


def find_root(start: pathlib.Path | None = None) -> pathlib.Path:
    """The minilora checkout that holds exercises/ (the working directory, a parent, or beside the package)."""
    return find_checkout("exercises/conftest.py", start)


def discover(root: pathlib.Path) -> list[Exercise]:
    """Every exercise under root/exercises/week*/, in course order (see minilora/course.py)."""
    return discover_exercises(root)


DEFAULT_TIMEOUT_S = 120  # per exercise; the reference solutions' tests take a few seconds each


class _TimedOut(Exception):
    def __init__(self, marker: str | None):
        self.marker = marker


def run_tests(root: pathlib.Path, exercises: list[Exercise], solutions: bool, extra_args: tuple[str, ...] = (),
              timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Outcome]:
    """Run the exercises' tests in a pytest subprocess; return an Outcome per exercise marker.

    An exercise whose tests run longer than `timeout_s` (an endless loop in a stub, say) is stopped and marked
    "timed out", and the others are run again without it. Raises RuntimeError with pytest's output when pytest
    itself could not run (exit code other than 0 or 1).
    """
    outcomes = {e.marker: Outcome() for e in exercises}
    remaining = [e for e in exercises if e.tests]
    while remaining:
        try:
            outcomes.update(_run_once(root, remaining, solutions, extra_args, timeout_s))
            break
        except _TimedOut as stopped:
            # Unknown marker: pytest never started a test (a stub that loops while it is imported); blame them all.
            hit = [e for e in remaining if stopped.marker in (None, e.marker)]
            for e in hit:
                o = outcomes[e.marker] = Outcome(timed_out=True)
                o.messages.append(f"exercise {e.label}: its tests ran longer than {timeout_s:g} s and were stopped "
                                  f"(an endless loop in exercises/week{e.week}/{e.stub.name}?); "
                                  f"run `pytest -m {e.marker} -x` to see where it hangs")
            remaining = [e for e in remaining if e not in hit]
    return outcomes


def _run_once(root, exercises, solutions, extra_args, timeout_s) -> dict[str, Outcome]:
    outcomes = {e.marker: Outcome() for e in exercises}
    paths = [str(t.relative_to(root)) for e in exercises for t in e.tests]
    with tempfile.TemporaryDirectory(prefix="minilora-exercises-") as tmp:
        report, progress = pathlib.Path(tmp) / "report.xml", pathlib.Path(tmp) / "progress"
        env = dict(os.environ, MINILORA_SOLUTIONS="1" if solutions else "0",
                   MINILORA_EXERCISE_PROGRESS=str(progress))
        cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={report}", "-o", "junit_family=xunit2",
               *extra_args]
        with open(pathlib.Path(tmp) / "out", "w+") as out:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
            _wait_watching(proc, progress, timeout_s)
            out.seek(0)
            output = out.read()
        if proc.returncode not in (0, 1) or not report.exists():
            raise RuntimeError(f"pytest could not run the exercise tests (exit code {proc.returncode}):\n"
                               f"{output[-6000:]}")
        tree = ET.parse(report)
    for case in tree.iter("testcase"):
        m = TEST_MODULE.search(case.get("classname", "") + " " + case.get("name", ""))
        if not m or f"ex{m[1]}_{m[2]}" not in outcomes:
            continue
        out = outcomes[f"ex{m[1]}_{m[2]}"]
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            out.failed += 1
            text = (failure.get("message") or "") + (failure.text or "")
            out.not_implemented += "NotImplementedError" in text
            out.messages.append(f"{case.get('name')}: {(failure.get('message') or '').splitlines()[0][:160]}"
                                if failure.get("message") else case.get("name", ""))
        elif error is not None:
            out.errors += 1
            detail = [ln.strip() for ln in (error.text or "").splitlines() if ln.strip().startswith("E ")]
            why = detail[-1][1:].strip() if detail else (error.get("message") or "")
            out.messages.append(f"{case.get('name') or case.get('classname')}: {why[:160]}")
        elif skipped is not None:
            out.skipped += 1
        else:
            out.passed += 1
    return outcomes


def _wait_watching(proc: subprocess.Popen, progress: pathlib.Path, timeout_s: float) -> None:
    """Wait for pytest; kill it when one exercise (named in `progress` by exercises/conftest.py) runs too long."""
    current, since = None, time.monotonic()
    while True:
        try:
            proc.wait(timeout=0.2)
            return
        except subprocess.TimeoutExpired:
            pass
        lines = progress.read_text(encoding="utf-8").split() if progress.exists() else []
        if lines and lines[-1] != current:
            current, since = lines[-1], time.monotonic()
        if time.monotonic() - since > timeout_s:
            proc.kill()
            proc.wait()
            raise _TimedOut(current)


def format_table(exercises: list[Exercise], outcomes: dict[str, Outcome], solutions: bool) -> str:
    lines = []
    title_width = min(max((len(e.title) for e in exercises), default=5), 60)
    for week in sorted({e.week for e in exercises}):
        in_week = [e for e in exercises if e.week == week]
        done = sum(outcomes[e.marker].status == "done" for e in in_week)
        lines.append(f"Week {week}  ({done}/{len(in_week)} done)")
        lines.append(f"  {'exercise':<9} {'title':<{title_width}}  {'tests passed':>12}  status")
        for e in in_week:
            o = outcomes[e.marker]
            title = e.title if len(e.title) <= title_width else e.title[:title_width - 1] + "…"
            lines.append(f"  {e.label:<9} {title:<{title_width}}  {f'{o.passed}/{o.total}':>12}  {o.status}")
        lines.append("")
    done = sum(outcomes[e.marker].status == "done" for e in exercises)
    passed = sum(o.passed for o in outcomes.values())
    total = sum(o.total for o in outcomes.values())
    what = "reference solutions" if solutions else "your code"
    lines.append(f"Overall ({what}): {done}/{len(exercises)} exercises done, {passed}/{total} tests passing.")
    if not solutions:
        nxt = next((e for e in exercises if outcomes[e.marker].status != "done"), None)
        if nxt is not None:
            lines.append(f"Next: exercise {nxt.label} — edit exercises/{nxt.stub.parent.name}/{nxt.stub.name}, "
                         f"then run `minilora exercises --check {nxt.label}` (or `pytest -m {nxt.marker}`).")
    return "\n".join(lines)


def format_check(e: Exercise, o: Outcome, solutions: bool) -> str:
    """The verdict on one exercise: done, or which tests fail and why (first line of each failure)."""
    whose = "the reference solution" if solutions else f"exercises/week{e.week}/{e.stub.name}"
    head = f"Exercise {e.label} — {e.title} ({whose})"
    tests = " ".join(str(t.relative_to(t.parents[2])) for t in e.tests)
    if o.status == "done":
        return f"{head}\nDONE: all {o.total} tests pass."
    if o.status == "timed out":
        return f"{head}\nTIMED OUT: {o.messages[0]}"
    if o.status == "not started":
        verdict = (f"NOT STARTED: {o.failed} tests fail on the unfilled stub (NotImplementedError). "
                   f"Replace each `raise NotImplementedError(...)` with your code.")
    else:
        verdict = f"NOT YET: {o.passed}/{o.total} tests pass."
    lines = [head, verdict]
    lines += [f"  - {msg}" for msg in o.messages if "NotImplementedError" not in msg or o.status != "not started"]
    lines.append(f"Full output: pytest {tests}")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "exercises", help="run the exercise tests and show your progress per week",
        description="Run the workbook's exercise tests (exercises/weekN/) and print a progress table: exercise, "
                    "title, tests passed/total and status (done / in progress / not started / failing). "
                    "Check one exercise with `minilora exercises --check N.M` (or `pytest -m exN_M`).")
    parser.add_argument("--week", type=int, metavar="N", help="only this week's exercises")
    parser.add_argument("--check", metavar="N.M",
                        help="run exactly exercise N.M's tests and print a verdict (exit code 0 when all pass)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"stop an exercise whose tests run longer than S seconds (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--solutions", action="store_true",
                        help="run the same tests against the reference solutions in exercises/solutions/")
    parser.add_argument("--details", action="store_true", help="also print the first failure message of each test")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        root = find_root()
    except FileNotFoundError as e:
        print(f"minilora exercises: {e}", file=sys.stderr)
        return 2
    exercises = discover(root)
    if not exercises:
        print(f"minilora exercises: no exercises found under {root / 'exercises'}", file=sys.stderr)
        return 2
    if args.check is not None:
        return _check(root, exercises, args)
    if args.week is not None:
        weeks = sorted({e.week for e in exercises})
        exercises = [e for e in exercises if e.week == args.week]
        if not exercises:
            print(f"minilora exercises: there are no exercises for week {args.week}; weeks with exercises: "
                  f"{', '.join(map(str, weeks))}", file=sys.stderr)
            return 2
    print(f"Running the tests of {len(exercises)} exercise(s)"
          f"{' against the reference solutions' if args.solutions else ''}…", flush=True)
    try:
        outcomes = run_tests(root, exercises, solutions=args.solutions, timeout_s=args.timeout)
    except RuntimeError as e:
        print(f"minilora exercises: {e}", file=sys.stderr)
        return 2
    for o in outcomes.values():
        if o.timed_out:
            print(o.messages[0])
    print(format_table(exercises, outcomes, args.solutions))
    if args.details:
        for e in exercises:
            for msg in outcomes[e.marker].messages:
                print(f"  {e.label}  {msg}")
    return 0


def _check(root: pathlib.Path, exercises: list[Exercise], args: argparse.Namespace) -> int:
    try:
        marker = exercise_marker(args.check)
    except ValueError as e:
        print(f"minilora exercises: --check: {e}", file=sys.stderr)
        return 2
    chosen = next((e for e in exercises if e.marker == marker), None)
    if chosen is None:
        print(f"minilora exercises: there is no exercise {args.check}; the exercises are "
              f"{', '.join(e.label for e in exercises)}", file=sys.stderr)
        return 2
    if not chosen.tests:
        print(f"minilora exercises: exercise {chosen.label} has no test file "
              f"exercises/week{chosen.week}/test_{chosen.stem}.py", file=sys.stderr)
        return 2
    try:
        outcome = run_tests(root, [chosen], solutions=args.solutions, timeout_s=args.timeout)[chosen.marker]
    except RuntimeError as e:
        print(f"minilora exercises: {e}", file=sys.stderr)
        return 2
    print(format_check(chosen, outcome, args.solutions))
    return 0 if outcome.status == "done" else 1

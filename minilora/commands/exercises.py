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
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

STUB = re.compile(r"^ex(\d+)_(\d+)_(\w+)\.py$")
TEST_MODULE = re.compile(r"test_ex(\d+)_(\d+)_\w+")


@dataclass
class Exercise:
    week: int
    number: int
    stem: str            # ex1_1_lora_forward
    title: str           # from the stub's docstring
    stub: pathlib.Path
    tests: list[pathlib.Path]

    @property
    def marker(self) -> str:
        return f"ex{self.week}_{self.number}"

    @property
    def label(self) -> str:
        return f"{self.week}.{self.number}"


@dataclass
class Outcome:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    not_implemented: int = 0          # failures raised by a stub that is still a stub
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    @property
    def status(self) -> str:
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
    """The minilora checkout that holds exercises/: the working directory (or a parent), else the package's parent."""
    here = (start or pathlib.Path.cwd()).resolve()
    for candidate in (here, *here.parents, pathlib.Path(__file__).resolve().parents[2]):
        if (candidate / "exercises" / "conftest.py").is_file():
            return candidate
    raise FileNotFoundError("no exercises/ folder found: run this command inside your minilora checkout "
                            "(the folder with exercises/, lessons/ and journal/)")


def _title(stub: pathlib.Path) -> str:
    """The stub docstring's first line without the 'Exercise N.M —' prefix."""
    text = stub.read_text(encoding="utf-8").strip()
    first = text.splitlines()[0].strip().strip('"\' #') if text else ""
    return re.sub(r"^Exercise\s+\d+\.\d+\s*[—:-]+\s*", "", first).rstrip(".") or stub.stem


def discover(root: pathlib.Path) -> list[Exercise]:
    """Every exercise under root/exercises/week*/, in course order."""
    found = []
    for stub in (root / "exercises").glob("week*/ex*_*.py"):
        m = STUB.match(stub.name)
        if not m:
            continue
        tests = sorted(stub.parent.glob(f"test_{stub.stem}*.py"))
        found.append(Exercise(int(m[1]), int(m[2]), stub.stem, _title(stub), stub, tests))
    return sorted(found, key=lambda e: (e.week, e.number))


def run_tests(root: pathlib.Path, exercises: list[Exercise], solutions: bool,
              extra_args: tuple[str, ...] = ()) -> dict[str, Outcome]:
    """Run the exercises' tests once in a pytest subprocess; return an Outcome per exercise marker.

    Raises RuntimeError with pytest's output when pytest itself could not run (exit code other than 0 or 1).
    """
    outcomes = {e.marker: Outcome() for e in exercises}
    paths = [str(t.relative_to(root)) for e in exercises for t in e.tests]
    if not paths:
        return outcomes
    env = dict(os.environ, MINILORA_SOLUTIONS="1" if solutions else "0")
    with tempfile.TemporaryDirectory(prefix="minilora-exercises-") as tmp:
        report = pathlib.Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={report}", "-o", "junit_family=xunit2",
               *extra_args]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode not in (0, 1) or not report.exists():
            raise RuntimeError(f"pytest could not run the exercise tests (exit code {proc.returncode}):\n"
                               f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
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
                         f"then run `pytest -m {nxt.marker}`.")
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "exercises", help="run the exercise tests and show your progress per week",
        description="Run the workbook's exercise tests (exercises/weekN/) and print a progress table: exercise, "
                    "title, tests passed/total and status (done / in progress / not started / failing). "
                    "Run one exercise's tests with `pytest -m exN_M`.")
    parser.add_argument("--week", type=int, metavar="N", help="only this week's exercises (1-5)")
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
        outcomes = run_tests(root, exercises, solutions=args.solutions)
    except RuntimeError as e:
        print(f"minilora exercises: {e}", file=sys.stderr)
        return 2
    print(format_table(exercises, outcomes, args.solutions))
    if args.details:
        for e in exercises:
            for msg in outcomes[e.marker].messages:
                print(f"  {e.label}  {msg}")
    return 0

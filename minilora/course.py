"""The shape of the course, in one place: the order of the lessons and where the exercises are.

Plain Python (no torch), so that everything that walks the course imports it cheaply: the lesson runner
(tests/lesson_runner.py), the exercise plumbing (exercises/conftest.py and the repository's conftest.py),
`minilora exercises` and the docs build (docs/hooks.py).

- A lesson is ``lessons/weekN_<topic>.py``; :func:`course_key` orders them by week, then by :data:`COURSE_ORDER`.
- Exercise N.M is the stub ``exercises/weekN/exN_M_<topic>.py``, checked by ``exercises/weekN/test_exN_M_*.py``
  whose tests carry the pytest marker ``exN_M``; :func:`discover_exercises` finds them.
"""
from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

# The order inside each week. A lesson not listed here still appears: after the listed lessons of its week, by name.
# A lesson named after a listed one plus a suffix (week5_capstone_cpu after week5_capstone) takes that one's place,
# its parts ordered by name, so splitting a lesson in two needs no change here.
COURSE_ORDER = [
    "week1_big_picture", "week1_lora",
    "week2_model_family", "week2_attention",
    "week3_nf4", "week3_kernels_rope_swiglu", "week3_cross_entropy",
    "week4_memory", "week4_8bit",
    "week5_triton_fast_lora", "week5_checkpointing", "week5_saving", "week5_capstone", "week5_capstone_gpu",
    "week6_beyond_one_gpu",
]
LESSON = re.compile(r"^week(\d+)_\w+$")
STUB = re.compile(r"^ex(\d+)_(\d+)_(\w+)\.py$")
TEST_FILE = re.compile(r"^test_ex(\d+)_(\d+)_\w*\.py$")
MARKER = re.compile(r"^ex(\d+)_(\d+)$")


def lesson_week(name: str) -> int | None:
    """The week a lesson belongs to (week3_nf4 -> 3), or None for a name outside the weekN_ scheme."""
    m = LESSON.match(name)
    return int(m[1]) if m else None


def course_key(name: str) -> tuple:
    """Sort key of a lesson name: its week, its place in COURSE_ORDER within the week, then its name.

    Names outside the weekN_ scheme come after every week (`capstone*` last of all).
    """
    week = lesson_week(name)
    if week is None:
        week = 10_000 if name.startswith("capstone") else 9_999
    rank = len(COURSE_ORDER)
    for i, listed in enumerate(COURSE_ORDER):
        if name == listed or name.startswith(listed + "_"):
            rank = i
            break
    return (week, rank, name)


def lesson_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every root/lessons/*.py in course order."""
    return sorted((pathlib.Path(root) / "lessons").glob("*.py"), key=lambda p: course_key(p.stem))


def find_checkout(marker: str, start: pathlib.Path | None = None) -> pathlib.Path:
    """The minilora checkout that holds `marker` (a relative path such as "exercises/conftest.py").

    Looks in the working directory (or `start`) and its parents, then beside the installed package (an editable
    install). Raises FileNotFoundError saying where to run from.
    """
    here = (start or pathlib.Path.cwd()).resolve()
    for candidate in (here, *here.parents, pathlib.Path(__file__).resolve().parents[1]):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"no {marker} found in {here} or its parents: run this command inside your minilora "
                            f"checkout (the folder with exercises/, lessons/ and journal/)")


@dataclass
class Exercise:
    week: int
    number: int
    stem: str                    # ex1_1_lora_forward
    title: str                   # the stub docstring's first line, without "Exercise N.M —"
    stub: pathlib.Path           # exercises/week1/ex1_1_lora_forward.py
    tests: list[pathlib.Path]    # exercises/week1/test_ex1_1_lora_forward.py, ...

    @property
    def marker(self) -> str:
        return f"ex{self.week}_{self.number}"

    @property
    def label(self) -> str:
        return f"{self.week}.{self.number}"


def _title(stub: pathlib.Path) -> str:
    text = stub.read_text(encoding="utf-8").strip()
    first = text.splitlines()[0].strip().strip('"\' #') if text else ""
    return re.sub(r"^Exercise\s+\d+\.\d+\s*[—:-]+\s*", "", first).rstrip(".") or stub.stem


def discover_exercises(root: pathlib.Path) -> list[Exercise]:
    """Every exercise under root/exercises/week*/, in course order (week, then number)."""
    found = []
    for stub in (pathlib.Path(root) / "exercises").glob("week*/ex*_*.py"):
        m = STUB.match(stub.name)
        if m:
            tests = sorted(stub.parent.glob(f"test_{stub.stem}*.py"))
            found.append(Exercise(int(m[1]), int(m[2]), stub.stem, _title(stub), stub, tests))
    return sorted(found, key=lambda e: (e.week, e.number))


def exercise_marker(label: str) -> str:
    """"1.1", "1_1", "ex1_1" -> "ex1_1"; ValueError naming the accepted forms otherwise."""
    m = re.fullmatch(r"\s*(?:ex)?(\d+)[._](\d+)\s*", label)
    if not m:
        raise ValueError(f"not an exercise number: {label!r}; write it as 1.1 (or ex1_1)")
    return f"ex{int(m[1])}_{int(m[2])}"


def markers_selected_only(expression: str) -> set[str] | None:
    """The exercise markers a pytest `-m` expression selects when it is nothing but exercise markers joined by
    `or` ("ex1_1", "ex1_1 or ex2_2"); None for any other expression (it may select library tests too)."""
    parts = [p.strip().strip("()").strip() for p in re.split(r"\s+or\s+", expression.strip())]
    if not parts or not all(MARKER.match(p) for p in parts):
        return None
    return set(parts)


def marker_of_test_file(name: str) -> str | None:
    """test_ex1_1_lora_forward.py -> "ex1_1"; None for a file that is not an exercise test."""
    m = TEST_FILE.match(name)
    return f"ex{m[1]}_{m[2]}" if m else None

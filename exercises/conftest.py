"""Exercise plumbing.

Each exercise N.M is a stub module ``exercises/weekN/exN_M_<topic>.py`` that a learner fills in, a solution module
``exercises/solutions/exN_M_<topic>.py``, and a test file ``exercises/weekN/test_exN_M_<topic>.py`` marked
``pytest.mark.exN_M``. Tests get the module through the ``exercise`` helper below, so one switch runs the very same
tests against the solutions:  ``MINILORA_SOLUTIONS=1 pytest exercises``.
"""
import importlib
import os
import pathlib
import re

HERE = pathlib.Path(__file__).parent
STUB = re.compile(r"^ex(\d+)_(\d+)_(\w+)\.py$")


def all_exercises():
    """[(week, marker, module_name, path)] for every stub file, in course order."""
    found = []
    for path in HERE.glob("week*/ex*_*.py"):
        m = STUB.match(path.name)
        if m:
            found.append((int(m[1]), int(m[2]), f"ex{m[1]}_{m[2]}", path.stem, path))
    return [(w, marker, stem, path) for w, _, marker, stem, path in sorted(found)]


def using_solutions() -> bool:
    return os.environ.get("MINILORA_SOLUTIONS", "0") == "1"


def exercise(module_name: str):
    """The learner's stub module, or the reference solution when MINILORA_SOLUTIONS=1."""
    for week, _, stem, _ in all_exercises():
        if stem == module_name:
            package = "exercises.solutions" if using_solutions() else f"exercises.week{week}"
            return importlib.import_module(f"{package}.{stem}")
    raise LookupError(f"no exercise module named {module_name!r} under exercises/week*/")


def pytest_configure(config):
    for week, marker, stem, path in all_exercises():
        first_line = (path.read_text().strip().splitlines() or [""])[0].strip('"# ')
        config.addinivalue_line("markers", f"{marker}: {first_line}")

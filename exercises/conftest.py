"""Exercise plumbing.

Each exercise N.M is a stub module ``exercises/weekN/exN_M_<topic>.py`` that a learner fills in, a solution module
``exercises/solutions/exN_M_<topic>.py``, and a test file ``exercises/weekN/test_exN_M_<topic>.py`` marked
``pytest.mark.exN_M``. Tests get the module through the ``exercise`` helper below, so one switch runs the very same
tests against the solutions:  ``MINILORA_SOLUTIONS=1 pytest exercises``.

Hypothesis runs quietly here (the "exercises" profile): a failing property test shows its falsifying example and
your error, without the long explanation and reproduction blob. ``HYPOTHESIS_PROFILE=default`` brings them back.
"""
import importlib
import os
import pathlib

from hypothesis import Phase, settings

from minilora.course import discover_exercises, marker_of_test_file

HERE = pathlib.Path(__file__).parent

settings.register_profile(
    "exercises", print_blob=False, deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink])  # no Phase.explain
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "exercises"))


def all_exercises():
    """[(week, marker, module_name, path)] for every stub file, in course order."""
    return [(e.week, e.marker, e.stem, e.stub) for e in discover_exercises(HERE.parent)]


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


def pytest_runtest_logstart(nodeid, location):
    """Tell `minilora exercises` which exercise is running (it stops one that runs past its time limit)."""
    progress = os.environ.get("MINILORA_EXERCISE_PROGRESS")
    marker = marker_of_test_file(pathlib.PurePath(nodeid.split("::")[0]).name)
    if progress and marker:
        with open(progress, "a", encoding="utf-8") as f:
            f.write(marker + "\n")

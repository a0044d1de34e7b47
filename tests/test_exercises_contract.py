"""The exercise contract: every exercise test FAILS on the stubs and PASSES on the reference solutions.

`make test` runs the whole suite with MINILORA_SOLUTIONS=1, so the exercise tests themselves already run against the
solutions in that same pytest session; this file adds the one extra run on the stubs (zero passes allowed). Run
without MINILORA_SOLUTIONS=1, it also runs the solutions itself, so on its own it proves both halves.
"""
import os
import pathlib

from minilora.commands.exercises import discover, format_table, run_tests

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXERCISES = discover(ROOT)


def test_every_exercise_has_tests_and_a_solution():
    assert EXERCISES, "no exercise stubs found under exercises/week*/"
    problems = []
    for e in EXERCISES:
        if not e.tests:
            problems.append(f"exercise {e.label}: no test file exercises/week{e.week}/test_{e.stem}.py")
        if not (ROOT / "exercises" / "solutions" / f"{e.stem}.py").is_file():
            problems.append(f"exercise {e.label}: no solution exercises/solutions/{e.stem}.py")
        if not (e.stub.parent / "__init__.py").is_file():
            problems.append(f"exercises/week{e.week}/ needs an empty __init__.py")
        stub_text = e.stub.read_text(encoding="utf-8")
        if f"Exercise {e.label}" not in stub_text or "NotImplementedError" not in stub_text:
            problems.append(f"{e.stub.relative_to(ROOT)}: a stub raises NotImplementedError(\"Exercise {e.label}: "
                            f"... — see lessons/...\")")
        for test in e.tests:
            if f"pytest.mark.{e.marker}" not in test.read_text(encoding="utf-8"):
                problems.append(f"{test.relative_to(ROOT)}: needs `pytestmark = pytest.mark.{e.marker}`")
    assert not problems, "\n".join(problems)


def test_every_exercise_test_fails_on_the_stubs():
    outcomes = run_tests(ROOT, EXERCISES, solutions=False)
    problems = []
    for e in EXERCISES:
        o = outcomes[e.marker]
        if o.total == 0:
            problems.append(f"exercise {e.label}: no tests ran")
        if o.passed:
            problems.append(f"exercise {e.label}: {o.passed} of {o.total} tests PASS on the unfilled stub "
                            f"(a test that passes before the learner writes anything checks nothing)")
        if o.skipped:
            problems.append(f"exercise {e.label}: {o.skipped} tests skipped on the stub")
    assert not problems, "\n".join(problems) + "\n\n" + format_table(EXERCISES, outcomes, solutions=False)


if os.environ.get("MINILORA_SOLUTIONS") != "1":
    # With MINILORA_SOLUTIONS=1 (make test) the exercise tests run against the solutions in this very session,
    # so a second run here would only repeat them.
    def test_every_exercise_test_passes_on_the_solutions():
        outcomes = run_tests(ROOT, EXERCISES, solutions=True)
        failing = [f"exercise {e.label}: {o.passed}/{o.total} pass; " + "; ".join(o.messages[:3])
                   for e in EXERCISES if (o := outcomes[e.marker]).passed != o.total or o.total == 0]
        assert not failing, "\n".join(failing)

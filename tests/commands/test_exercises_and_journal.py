"""`minilora journal` and `minilora exercises`, on small temporary workbooks."""
import datetime as dt
import pathlib
import shutil
import textwrap

import pytest

from minilora.cli import main
from minilora.commands import exercises as ex_cmd
from minilora.commands import journal as journal_cmd

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECTIONS = ("Daily progress", "Key concepts learned", "Questions to research", "Code snippets that were confusing",
            "Connections to transformer concepts")


@pytest.fixture
def journal(tmp_path):
    shutil.copytree(ROOT / "journal", tmp_path / "journal", ignore=shutil.ignore_patterns("20*.md"))
    return tmp_path / "journal"


def test_template_and_prompts_cover_the_plan():
    template = (ROOT / "journal" / "TEMPLATE.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in template
    for week in range(1, 7):
        assert (ROOT / "journal" / "prompts" / f"week{week}.md").is_file()
    assert "every parameter" in (ROOT / "journal" / "prompts" / "week1.md").read_text()


def test_journal_new_creates_a_dated_entry_with_the_weeks_prompts(journal, capsys):
    assert main(["journal", "--journal-dir", str(journal), "new", "--week", "3", "--date", "2026-11-27"]) == 0
    entry = journal / "entries" / "2026-11-27.md"
    text = entry.read_text()
    assert text.startswith("# Learning journal — 2026-11-27 (week 3)")
    assert all(f"## {s}" in text for s in SECTIONS)
    assert "### Week 3" in text and "{{" not in text
    assert main(["journal", "--journal-dir", str(journal), "list"]) == 0
    assert "2026-11-27" in capsys.readouterr().out


def test_journal_new_never_overwrites(journal, capsys):
    args = ["journal", "--journal-dir", str(journal), "new", "--date", "2026-11-27"]
    assert main(args) == 0
    entry = journal / "entries" / "2026-11-27.md"
    entry.write_text("my notes")
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert entry.read_text() == "my notes"


def test_journal_rejects_a_bad_week_and_guesses_the_week_from_the_first_entry(journal, capsys):
    assert main(["journal", "--journal-dir", str(journal), "new", "--week", "9"]) == 1
    assert "1-6" in capsys.readouterr().err
    journal_cmd.new_entry(journal, dt.date(2026, 11, 2), None)
    assert journal_cmd.guess_week(journal, dt.date(2026, 11, 17)) == 3
    assert journal_cmd.guess_week(journal, dt.date(2027, 6, 1)) == 6


def _workbook(tmp_path: pathlib.Path) -> pathlib.Path:
    """A two-exercise workbook: 1.1 solved by the learner, 1.2 still a stub."""
    (tmp_path / "exercises" / "week1").mkdir(parents=True)
    (tmp_path / "exercises" / "solutions").mkdir()
    shutil.copy(ROOT / "exercises" / "conftest.py", tmp_path / "exercises" / "conftest.py")
    for init in ("exercises/__init__.py", "exercises/week1/__init__.py", "exercises/solutions/__init__.py"):
        (tmp_path / init).write_text("")
    files = {
        "week1/ex1_1_add.py": '"""Exercise 1.1 — add two numbers."""\ndef add(a, b):\n    return a + b\n',
        "week1/ex1_2_mul.py": '"""Exercise 1.2 — multiply."""\ndef mul(a, b):\n'
                              '    raise NotImplementedError("Exercise 1.2: mul — see lessons/week1_lora.py")\n',
        "solutions/ex1_1_add.py": "def add(a, b):\n    return a + b\n",
        "solutions/ex1_2_mul.py": "def mul(a, b):\n    return a * b\n",
    }
    for name, text in files.items():
        (tmp_path / "exercises" / name).write_text(text)
    for stem, fn, op in (("ex1_1_add", "add", "+"), ("ex1_2_mul", "mul", "*")):
        marker = stem[:5]
        (tmp_path / "exercises" / "week1" / f"test_{stem}.py").write_text(textwrap.dedent(f"""
            import pytest
            from exercises.conftest import exercise
            pytestmark = pytest.mark.{marker}
            ex = exercise("{stem}")
            def test_small():
                assert ex.{fn}(2, 3) == 2 {op} 3
            def test_negative():
                assert ex.{fn}(-2, 3) == -2 {op} 3
            """))
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\npythonpath = .\n")
    return tmp_path


def test_exercises_progress_table(tmp_path, monkeypatch, capsys):
    root = _workbook(tmp_path)
    monkeypatch.chdir(root)
    assert main(["exercises"]) == 0
    out = capsys.readouterr().out
    assert "Week 1  (1/2 done)" in out
    row_11 = next(line for line in out.splitlines() if line.strip().startswith("1.1"))
    row_12 = next(line for line in out.splitlines() if line.strip().startswith("1.2"))
    assert "add two numbers" in row_11 and "2/2" in row_11 and row_11.endswith("done")
    assert "0/2" in row_12 and row_12.endswith("not started")
    assert "pytest -m ex1_2" in out

    assert main(["exercises", "--solutions", "--week", "1"]) == 0
    assert "Week 1  (2/2 done)" in capsys.readouterr().out
    assert main(["exercises", "--week", "4"]) == 2
    assert "weeks with exercises: 1" in capsys.readouterr().err


def test_every_real_exercise_is_discovered_with_a_title():
    found = ex_cmd.discover(ROOT)
    assert found and all(e.title and e.tests for e in found)


def test_exercises_check_gives_a_verdict_on_one_exercise(tmp_path, monkeypatch, capsys):
    root = _workbook(tmp_path)
    monkeypatch.chdir(root)
    assert main(["exercises", "--check", "1.1"]) == 0
    out = capsys.readouterr().out
    assert "Exercise 1.1 — add two numbers" in out and "DONE: all 2 tests pass" in out
    assert main(["exercises", "--check", "ex1_2"]) == 1
    out = capsys.readouterr().out
    assert "NOT STARTED" in out and "exercises/week1/test_ex1_2_mul.py" in out and "1.1" not in out
    assert main(["exercises", "--check", "1.2", "--solutions"]) == 0
    assert main(["exercises", "--check", "7.7"]) == 2
    assert "there is no exercise 7.7" in capsys.readouterr().err


def test_exercises_stops_an_exercise_that_runs_too_long(tmp_path, monkeypatch, capsys):
    root = _workbook(tmp_path)
    (root / "exercises" / "week1" / "ex1_2_mul.py").write_text(
        '"""Exercise 1.2 — multiply."""\ndef mul(a, b):\n    while True:\n        pass\n')
    monkeypatch.chdir(root)
    assert main(["exercises", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert "exercise 1.2: its tests ran longer than 5 s and were stopped" in out
    row_11 = next(line for line in out.splitlines() if line.strip().startswith("1.1"))
    row_12 = next(line for line in out.splitlines() if line.strip().startswith("1.2"))
    assert row_11.endswith("done") and row_12.endswith("timed out")

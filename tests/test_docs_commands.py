"""Docs pages that show commands with their output (```console blocks) tell the truth: each command is run and
must print exactly what the page states (tests/helpers/docs_commands.py; `--update` rewrites a page that drifted)."""
import pathlib

import pytest
from helpers.docs_commands import check, commands, update

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "```console" in p.read_text(encoding="utf-8"))


def test_the_registry_walkthrough_is_a_checked_page():
    assert ROOT / "docs" / "registry-walkthrough.md" in PAGES
    assert len(commands((ROOT / "docs" / "registry-walkthrough.md").read_text())) >= 5


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_shown_command_prints_what_the_page_says(page):
    problems = check(page)
    assert not problems, ("\n\n".join(problems) + f"\n\nIf the code changed on purpose, rewrite the outputs: "
                          f"python tests/helpers/docs_commands.py {page.relative_to(ROOT)} --update")


def test_a_stale_output_is_caught_and_update_fixes_it(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```console\n$ echo one\none\n$ python - <<'PY'\n> print(2 + 2)\n> PY\n5\n```\n\n"
                    "```bash\necho never run\n```\n")
    shown = commands(page.read_text())
    assert [s.command for s in shown] == ["echo one", "python - <<'PY'\nprint(2 + 2)\nPY"]
    [problem] = check(page)
    assert "print(2 + 2)" in problem and "4" in problem
    assert update(page) == 1 and check(page) == []
    assert "```bash\necho never run\n```" in page.read_text()

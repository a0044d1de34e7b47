"""Run the commands a docs page shows and compare what they print with what the page says they print.

A page opts in with fenced ``console`` blocks: a line ``$ command`` is run (bash, from the repository root, with
this Python first on PATH and the checkout on PYTHONPATH), lines starting with ``> `` continue it (a heredoc, say),
and the lines after it, up to the next ``$`` line or the end of the block, are its stated output. Other fences
(``bash``, ``python``) are shown, never run.

    python tests/helpers/docs_commands.py docs/registry-walkthrough.md            # check: differences, exit 1 if any
    python tests/helpers/docs_commands.py docs/registry-walkthrough.md --update   # rewrite the stated outputs in place
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


@dataclasses.dataclass
class Shown:
    command: str      # what bash runs (continuation lines joined with newlines)
    output: str       # what the page says it prints
    span: tuple       # (start, end) of the command + output text inside the page


def commands(page_text: str) -> list[Shown]:
    found = []
    for block in FENCE.finditer(page_text):
        body, offset = block[1], block.start(1)
        for m in re.finditer(r"^\$ (.*\n(?:> .*\n)*)((?:(?!\$ ).*\n)*)", body, re.M):
            command = "\n".join(line[2:] if line.startswith("> ") else line
                                for line in m[1].rstrip("\n").split("\n"))
            found.append(Shown(command, m[2].rstrip("\n"), (offset + m.start(2), offset + m.end(2))))
    return found


def run(command: str, timeout: float = 120) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LC_ALL="C",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return (done.stdout + done.stderr).rstrip("\n")


def check(page: pathlib.Path) -> list[str]:
    """One message per command whose output differs from the page's (empty: the page tells the truth)."""
    problems = []
    for shown in commands(page.read_text(encoding="utf-8")):
        actual = run(shown.command)
        if actual != shown.output:
            problems.append(f"{page.name}: `{shown.command}` prints\n{actual}\n--- but the page says\n{shown.output}")
    return problems


def update(page: pathlib.Path) -> int:
    """Rewrite every stated output with what the command prints now; returns how many changed."""
    text = page.read_text(encoding="utf-8")
    changed = 0
    for shown in reversed(commands(text)):  # from the end, so earlier spans stay valid
        actual = run(shown.command)
        if actual != shown.output:
            start, end = shown.span
            text = text[:start] + (actual + "\n" if actual else "") + text[end:]
            changed += 1
    page.write_text(text, encoding="utf-8")
    return changed


if __name__ == "__main__":
    path = pathlib.Path(sys.argv[1])
    if "--update" in sys.argv[2:]:
        print(f"{path}: {update(path)} stated output(s) rewritten")
    else:
        issues = check(path)
        print("\n\n".join(issues) or f"{path}: every command prints what the page says")
        raise SystemExit(1 if issues else 0)

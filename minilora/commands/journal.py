"""`minilora journal`: keep the learning journal — one dated Markdown entry a day.

``minilora journal new [--week N]`` copies journal/TEMPLATE.md (the five sections of the learning plan: daily
progress, key concepts learned, questions to research, code snippets that were confusing, connections to transformer
concepts) to journal/entries/YYYY-MM-DD.md and appends the week's prompts from journal/prompts/weekN.md. It never
overwrites an entry. ``minilora journal list`` lists the entries.
"""
from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import re
import sys

from ..course import find_checkout
from ..io.atomic import write_text

WEEKS = range(1, 7)
ENTRY = re.compile(r"^(\d{4}-\d{2}-\d{2})\.md$")


def find_journal(start: pathlib.Path | None = None) -> pathlib.Path:
    """The journal/ folder of the minilora checkout: in the working directory or a parent, else beside the package."""
    try:
        return find_checkout("journal/TEMPLATE.md", start) / "journal"
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}, or pass --journal-dir PATH") from None


def entries(journal: pathlib.Path) -> list[pathlib.Path]:
    folder = journal / "entries"
    return sorted(p for p in folder.glob("*.md") if ENTRY.match(p.name)) if folder.is_dir() else []


def guess_week(journal: pathlib.Path, today: dt.date) -> int:
    """Week of the course: 1 + whole weeks since the first entry (1 when there is none), at most the last
    week of the course (6)."""
    existing = entries(journal)
    if not existing:
        return 1
    first = dt.date.fromisoformat(ENTRY.match(existing[0].name)[1])
    return max(1, min(max(WEEKS), (today - first).days // 7 + 1))


def render(journal: pathlib.Path, day: dt.date, week: int) -> str:
    template = (journal / "TEMPLATE.md").read_text(encoding="utf-8")
    prompts_file = journal / "prompts" / f"week{week}.md"
    if not prompts_file.is_file():
        raise FileNotFoundError(f"no prompts for week {week}: expected {prompts_file}")
    prompts = prompts_file.read_text(encoding="utf-8").strip()
    # The prompts file starts with its own '# Week N' title: shown one level down inside the entry.
    prompts = re.sub(r"^# ", "### ", prompts, count=1)
    return (template.replace("{{date}}", day.isoformat()).replace("{{week}}", str(week))
            .replace("{{prompts}}", prompts))


def new_entry(journal: pathlib.Path, day: dt.date, week: int | None) -> pathlib.Path:
    """Create journal/entries/<day>.md; FileExistsError if it is already there (an entry is never overwritten)."""
    if week is not None and week not in WEEKS:
        raise ValueError(f"--week must be one of 1-6 (the six weeks of the course), got {week}")
    week = week if week is not None else guess_week(journal, day)
    target = journal / "entries" / f"{day.isoformat()}.md"
    if target.exists():
        raise FileExistsError(f"{target} already exists; edit it, or pass --date for another day "
                              f"(entries are never overwritten)")
    text = render(journal, day, week)
    target.parent.mkdir(parents=True, exist_ok=True)
    # exclusive: published by a hard link, which fails if the entry appeared meanwhile (never clobbered)
    write_text(target, text, exclusive=True)
    return target


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD, e.g. 2026-11-27") from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "journal", help="create and list learning-journal entries",
        description="The learning journal: one dated entry a day from journal/TEMPLATE.md with the week's prompts.")
    parser.add_argument("--journal-dir", type=pathlib.Path, default=None,
                        help="the journal folder (default: journal/ of the minilora checkout)")
    actions = parser.add_subparsers(dest="journal_action", metavar="action", required=True)
    new = actions.add_parser("new", help="create today's entry (journal/entries/YYYY-MM-DD.md)",
                             description="Create a dated entry from the template with the week's prompts. "
                                         "Refuses to overwrite an existing entry.")
    new.add_argument("--week", type=int, metavar="N",
                     help="which week's prompts to include, 1-6 (default: counted from your first entry)")
    new.add_argument("--date", type=_date, default=None, help="the entry's date, YYYY-MM-DD (default: today)")
    actions.add_parser("list", help="list the entries, oldest first")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        journal = args.journal_dir.resolve() if args.journal_dir else find_journal()
        if not (journal / "TEMPLATE.md").is_file():
            raise FileNotFoundError(f"{journal} has no TEMPLATE.md: point --journal-dir at minilora's journal/ folder")
        if args.journal_action == "new":
            path = new_entry(journal, args.date or dt.date.today(), args.week)
            print(f"Created {path}")
            print("Open it in your editor and fill in the five sections; the week's prompts are at the end.")
            return 0
        found = entries(journal)
        if not found:
            print(f"No entries yet in {journal / 'entries'}. Start one with: minilora journal new")
            return 0
        for path in found:
            heading = next((ln[2:].strip() for ln in path.read_text(encoding="utf-8").splitlines()
                            if ln.startswith("# ")), "")
            print(f"{path.stem}  {heading}")
        print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'} in {journal / 'entries'}")
        return 0
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"minilora journal: {e}", file=sys.stderr)
        return 1

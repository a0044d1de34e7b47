"""The course's pages agree with the course: six weeks (the sixth a bonus), a roadmap row per week, and each week's
journal prompt naming that week's lessons and exercises (read from lessons/ and exercises/, so a new lesson or
exercise without its prompt fails here)."""
import pathlib
import re

from minilora.course import discover_exercises, lesson_files, lesson_week

ROOT = pathlib.Path(__file__).resolve().parents[1]
WEEKS = sorted({lesson_week(p.stem) for p in lesson_files(ROOT)})
PAGES = ["README.md", "CONTRIBUTING.md", "mkdocs.yml", "pyproject.toml", "minilora/cli.py",
         "minilora/commands/journal.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
         *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "journal").rglob("*.md"))]


def test_the_course_has_six_weeks():
    assert WEEKS == [1, 2, 3, 4, 5, 6]


def test_no_page_counts_another_number_of_weeks():
    wrong = re.compile(r"\b(four|five|seven|eight|[4578])[- ]weeks?\b", re.I)  # "one week" is fine: a week of six
    found = [f"{page}: {m[0]!r}" for page in PAGES if (ROOT / page).is_file()
             for m in wrong.finditer((ROOT / page).read_text(encoding="utf-8"))]
    assert not found, "the course has six weeks (the sixth a bonus):\n" + "\n".join(found)


def test_the_roadmap_has_a_row_per_week():
    roadmap = (ROOT / "docs" / "roadmap.md").read_text(encoding="utf-8")
    assert roadmap.startswith("# The six-week roadmap")
    for week in WEEKS:
        assert f"<!-- lessons-week-{week} -->" in roadmap and f"<!-- exercises-week-{week} -->" in roadmap, week


def test_each_weeks_prompt_names_its_lessons_and_exercises():
    problems = []
    for week in WEEKS:
        prompt = (ROOT / "journal" / "prompts" / f"week{week}.md").read_text(encoding="utf-8")
        for lesson in lesson_files(ROOT):
            if lesson_week(lesson.stem) == week and f"`{lesson.stem}`" not in prompt:
                problems.append(f"journal/prompts/week{week}.md does not name lesson `{lesson.stem}`")
            if lesson_week(lesson.stem) != week and f"Lessons: `{lesson.stem}`" in prompt:
                problems.append(f"journal/prompts/week{week}.md lists week {lesson_week(lesson.stem)}'s lesson")
        for e in discover_exercises(ROOT):
            if e.week == week and not re.search(rf"\b{re.escape(e.label)}\b", prompt):
                problems.append(f"journal/prompts/week{week}.md does not name exercise {e.label}")
    assert not problems, "\n".join(problems)


def test_week_four_holds_no_week_five_task():
    prompt = (ROOT / "journal" / "prompts" / "week4.md").read_text(encoding="utf-8")
    assert "week5_" not in prompt and "checkpointing" not in prompt.lower()

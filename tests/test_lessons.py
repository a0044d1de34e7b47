"""Every lesson runs top to bottom as a notebook on CPU.

Each lessons/*.py (jupytext percent format) is converted with jupytext and executed with nbclient, with the repo
root as working directory, inline matplotlib figures and a per-cell timeout (MINILORA_CELL_TIMEOUT, default 300 s).
The executed notebook is saved to docs/lessons/<name>.ipynb, which the docs site renders without running it again.
"""

import pytest
from helpers.lesson_runner import LESSONS, execute_lesson, lesson_files, prefetch

LESSON_FILES = lesson_files()


@pytest.fixture(scope="module", autouse=True)
def _start_selected_lessons(request):
    """With MINILORA_LESSON_WORKERS=2, start every lesson selected in this session (after -k / -m) in the background."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_lesson_executes" and hasattr(item, "callspec")]
    prefetch(selected)


def test_there_are_lessons():
    assert LESSON_FILES, f"no lessons found: expected jupytext files lessons/weekN_<topic>.py under {LESSONS}"


@pytest.mark.parametrize("path", LESSON_FILES, ids=[p.stem for p in LESSON_FILES])
def test_lesson_executes(path):
    result = execute_lesson(path)
    assert result.notebook_path.exists()
    print(f"{path.name}: {result.seconds:.1f} s")

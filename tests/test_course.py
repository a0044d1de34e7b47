"""minilora/course.py: the course order and where the exercises are, and `pytest -m exN_M` staying in exercises/."""
import os
import pathlib
import subprocess
import sys

import pytest

from minilora.course import (
    course_key,
    discover_exercises,
    exercise_marker,
    lesson_files,
    marker_of_test_file,
    markers_selected_only,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_course_order_tolerates_new_and_split_lessons():
    names = ["week6_beyond_one_gpu", "week5_capstone_gpu", "week5_capstone_cpu", "week5_saving", "week5_zzz_new",
             "week4_8bit", "week4_memory", "week2_attention", "week2_model_family", "week10_later", "week1_lora",
             "week1_big_picture", "week3_aaa_unlisted", "week3_cross_entropy", "week3_nf4"]
    assert sorted(names, key=course_key) == [
        "week1_big_picture", "week1_lora", "week2_model_family", "week2_attention", "week3_nf4",
        "week3_cross_entropy", "week3_aaa_unlisted", "week4_memory", "week4_8bit", "week5_saving",
        "week5_capstone_cpu", "week5_capstone_gpu", "week5_zzz_new", "week6_beyond_one_gpu", "week10_later"]


def test_every_lesson_and_exercise_is_found():
    lessons = [p.stem for p in lesson_files(ROOT)]
    assert lessons and lessons == sorted(lessons, key=course_key)
    exercises = discover_exercises(ROOT)
    assert [e.label for e in exercises][:2] == ["1.1", "1.2"]
    assert all(e.tests and e.title for e in exercises)


def test_exercise_names():
    assert exercise_marker("1.1") == exercise_marker("ex1_1") == exercise_marker("1_1") == "ex1_1"
    with pytest.raises(ValueError, match="write it as 1.1"):
        exercise_marker("one")
    assert marker_of_test_file("test_ex3_4_nf4_codebook.py") == "ex3_4"
    assert marker_of_test_file("test_lora.py") is None
    assert markers_selected_only("ex1_1") == {"ex1_1"}
    assert markers_selected_only("ex1_1 or ex2_2") == {"ex1_1", "ex2_2"}
    for other in ("not ex1_1", "ex1_1 and slow", "gpu", ""):
        assert markers_selected_only(other) is None


def test_pytest_m_exercise_collects_only_that_exercise():
    """The README's `pytest -m ex1_1` must not import tests/ (a minute of torch/transformers imports)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "ex1_1", "--collect-only", "-q", "-p",
                           "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MINILORA_SOLUTIONS="1"))
    ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert ids and all(ln.startswith("exercises/week1/test_ex1_1_") for ln in ids), proc.stdout[-3000:]
    assert "deselected" not in proc.stdout, "other test files were imported, then deselected"

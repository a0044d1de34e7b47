"""Repo-wide pytest set-up: run Triton kernels through the interpreter when there is no GPU, keep
`pytest -m exN_M` (the workbook's command for one exercise) inside that exercise's test files, and, under CI
(CI=true), have hypothesis replay the same examples on every run.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, before any test module loads.
"""
import os
import pathlib

from minilora.course import discover_exercises, marker_of_test_file, markers_selected_only

try:
    import torch
    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False

if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    from hypothesis import settings as hypothesis_settings
except ImportError:  # pragma: no cover - a learner's bare environment
    hypothesis_settings = None
if hypothesis_settings is not None:
    # CI gates a submission on examples seeded from each test's name, so a newly drawn example cannot fail it by
    # chance; every other run (yours) keeps drawing new ones, which is how odd shapes are found.
    hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        hypothesis_settings.load_profile("ci")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (compiled Triton kernels); run on the GPU machine")
    config.addinivalue_line("markers", "slow: loads the real SmolLM2 model or runs a long job")
    for e in discover_exercises(pathlib.Path(__file__).parent):  # also when tests/ imports an exercise test module
        config.addinivalue_line("markers", f"{e.marker}: exercise {e.label}")


def pytest_collection_modifyitems(config, items):
    import pytest
    if _has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_ignore_collect(collection_path, config):
    """`pytest -m ex1_1` with no paths: collect only exercises/weekN/test_ex1_1_*.py.

    Without this, pytest would import every module under tests/ (torch, transformers, peft...) only to deselect
    them all, which takes a minute on a small machine. Applies only when the -m expression is nothing but exercise
    markers (`ex1_1`, `ex1_1 or ex2_2`) and no paths were given; otherwise collection is pytest's own.
    """
    selected = markers_selected_only(config.option.markexpr or "")
    if selected is None or config.args_source is not config.ArgsSource.TESTPATHS:
        return None
    path = pathlib.Path(collection_path)
    if path.is_dir():
        inside = pathlib.Path(config.rootpath, "exercises")
        return not (path == inside or inside in path.parents or path in inside.parents)
    if path.name.startswith("test_"):
        return marker_of_test_file(path.name) not in selected
    return None

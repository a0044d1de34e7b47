"""Repo-wide pytest set-up: run Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, before any test module loads.
"""
import os

try:
    import torch
    _has_cuda = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _has_cuda = False

if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (compiled Triton kernels); run on the GPU machine")
    config.addinivalue_line("markers", "slow: loads the real SmolLM2 model or runs a long job")


def pytest_collection_modifyitems(config, items):
    import pytest
    if _has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a machine with one")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

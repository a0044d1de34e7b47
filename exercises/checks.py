"""Checks on HOW an exercise answer computes, not only on what it returns.

Some stubs state a constraint that the right numbers alone cannot reveal: "never form B @ A", "no autograd",
"read the row block by block". The exercise tests use these helpers to hold an answer to them.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode


class _Recorder(TorchFunctionMode):
    """Calls every torch function as usual and remembers (name, args, result) of each."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        self.calls.append((getattr(func, "__name__", str(func)), args, result))
        return result


@contextlib.contextmanager
def record_torch_calls():
    """`with record_torch_calls() as calls:` — afterwards `calls` lists (name, args, result) of every torch call."""
    recorder = _Recorder()
    with recorder:
        yield recorder.calls


def new_tensors_of_shape(calls, *shapes) -> list[str]:
    """Names of the calls that produced a NEW tensor (not a view, not one of their inputs) of one of `shapes`."""
    wanted = {tuple(s) for s in shapes}
    found = []
    for name, args, result in calls:
        if isinstance(result, torch.Tensor) and tuple(result.shape) in wanted and result._base is None \
                and not any(result is a for a in args):
            found.append(name)
    return found


@contextlib.contextmanager
def no_autograd(why: str):
    """Make every way into autograd raise AssertionError(why) inside the block."""
    def refuse(*args, **kwargs):
        raise AssertionError(why)
    targets = [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward"),
               (torch.func, "grad"), (torch.func, "vjp"), (torch.autograd.functional, "vjp"),
               (torch.autograd.functional, "jacobian")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    try:
        for owner, name in targets:
            setattr(owner, name, refuse)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)

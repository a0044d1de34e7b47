"""Checks on HOW an exercise answer computes, not only on what it returns.

Some stubs state a constraint that the right numbers alone cannot reveal: "never form B @ A", "no autograd",
"read the row block by block". The exercise tests use these helpers to hold an answer to them.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


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
    """Make every way into autograd raise AssertionError(why) inside the block: the entry points by name, and —
    whatever name they were imported under — any op that records a tensor for a backward pass."""
    def refuse(*args, **kwargs):
        raise AssertionError(why)
    targets = [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward"),
               (torch.func, "grad"), (torch.func, "vjp"), (torch.autograd.functional, "vjp"),
               (torch.autograd.functional, "jacobian")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    try:
        for owner, name in targets:
            setattr(owner, name, refuse)
        with torch.autograd.graph.saved_tensors_hooks(refuse, refuse):  # no graph, no backward: nothing is saved
            yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


class _Refuse(TorchFunctionMode):
    """Raises AssertionError(why) when a torch function whose name contains one of `fragments` is called."""

    def __init__(self, fragments, why):
        super().__init__()
        self.fragments, self.why = fragments, why

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if any(f in name for f in self.fragments):
            raise AssertionError(f"{self.why} (called: {name})")
        return func(*args, **(kwargs or {}))


class _RefuseOps(TorchDispatchMode):
    """The same ban one level lower, on the ATen operators: it also sees a fused kernel that a permitted function
    (nn.MultiheadAttention, say) reaches from inside, where the function-level ban no longer looks."""

    def __init__(self, fragments, why):
        super().__init__()
        self.fragments, self.why = fragments, why

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(f in name for f in self.fragments):
            raise AssertionError(f"{self.why} (called: {name})")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbidden_calls(fragments: tuple[str, ...], why: str):
    """Inside the block, any torch function or ATen operator whose name contains one of `fragments` raises
    AssertionError(why), whatever name or module the answer reached it through (an alias, `torch.ops.aten...`,
    a helper module that kept a reference)."""
    with _Refuse(fragments, why), _RefuseOps(fragments, why):
        yield

"""Each plausible wrong answer in exercise_mistakes.py is REJECTED by its exercise test, with a message that names
the mistake. (The contract test proves the other half: the same tests pass on exercises/solutions.)"""
import importlib
import inspect

import pytest
from helpers.exercise_mistakes import MISTAKES


@pytest.mark.parametrize("test_file, name, answer, test_name, kwargs, named",
                         MISTAKES, ids=[m[1] for m in MISTAKES])
def test_the_exercise_test_rejects_the_wrong_answer(monkeypatch, test_file, name, answer, test_name, kwargs, named):
    module = importlib.import_module(test_file.removesuffix(".py").replace("/", "."))
    monkeypatch.setattr(module, "ex", answer)
    test = getattr(module, test_name, None)
    assert test is not None, f"{test_file} has no {test_name}"
    if "monkeypatch" in inspect.signature(test).parameters:
        kwargs = {**kwargs, "monkeypatch": monkeypatch}
    with pytest.raises((AssertionError, pytest.fail.Exception)) as failure:
        test(**kwargs)
    message = str(failure.value)
    assert named.lower() in message.lower(), \
        f"{test_name} rejects '{name}' but its message does not name the mistake ({named!r}):\n{message[:1500]}"

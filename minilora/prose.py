"""Sentences that follow the data: the direction word of a comparison comes from the sign of its number.

A lesson that writes "the fused loss also saves time" next to a measured +41.8 ms contradicts itself the day the
measurement changes. `compare` picks the word from the sign and writes the signed number beside it, in a form a
reader (and `tests/test_lesson_prose.py`) can check: ``"41.8 ms slower (Δ +41.8 ms)"``.

Every direction word belongs to a *kind* of quantity, because the same sign means opposite things: +3 ms is slower,
+3 tok/s is faster. `kind_of` infers the kind from the unit; for a unitless number, %, or x pass ``kind=``.

`cite` formats a constant taken from somewhere else (a paper, a README) with its source, so that a figure the
lesson did not compute is never mistaken for one it did.

`claim` is how a lesson says what a measurement means ("the loss falls below chance", "recompute costs time"): the
sentence is printed with the numbers it rests on, and a false one stops the lesson (and so CI) with both in the
message. tests/lesson_prose.py finds the claims in an executed notebook by the metadata `claim` attaches.
"""
from __future__ import annotations

import math
import re

# kind -> (words meaning "the number went up", words meaning "it went down"); the first of each is the default
WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "time": (("slower", "costs time", "more time", "longer", "costs", "pays for"),
             ("faster", "saves time", "less time", "shorter", "saves")),
    "throughput": (("faster", "higher", "more"), ("slower", "lower", "less")),
    "memory": (("more", "larger", "costs", "higher"), ("less", "smaller", "saves", "lower")),
    "amount": (("more", "higher", "larger", "up"), ("less", "lower", "smaller", "down")),
}
UNIT_KINDS = {"ms": "time", "s": "time", "µs": "time", "us": "time", "min": "time",
              "tok/s": "throughput", "tokens/s": "throughput", "GB/s": "throughput", "TB/s": "throughput",
              "B": "memory", "KB": "memory", "MB": "memory", "GB": "memory", "KiB": "memory", "MiB": "memory",
              "GiB": "memory", "bytes": "memory"}
# the annotation compare() writes: "(Δ +41.8 ms)" or, when the kind is not the unit's, "(Δ +12.0%, time)"
ANNOTATION = re.compile(r"\(Δ ([+\-−])(\d[\d,]*(?:\.\d+)?)\s?([^\s,()]*)(?:, (\w+))?\)")


def kind_of(unit: str, kind: str | None = None) -> str:
    if kind is not None:
        if kind not in WORDS:
            raise ValueError(f"kind={kind!r}: choose one of {', '.join(WORDS)}")
        return kind
    if unit.strip() not in UNIT_KINDS:
        raise ValueError(f"the unit {unit!r} does not say whether up is good or bad: pass kind= (one of "
                         f"{', '.join(WORDS)})")
    return UNIT_KINDS[unit.strip()]


def direction(word: str, kind: str) -> int:
    """+1 if `word` says the number of this kind went up, -1 if down, 0 if it is not a direction word of the kind."""
    up, down = WORDS[kind]
    return 1 if word in up else -1 if word in down else 0


def compare(delta: float, unit: str = "", *, kind: str | None = None, more: str | None = None,
            less: str | None = None, fmt: str = ".1f", same: str = "no different", tol: float = 0.0) -> str:
    """``"41.8 ms slower (Δ +41.8 ms)"``: the size, the word the sign picks, and the signed number.

    `more`/`less` override the default words; they must be words of the kind (`WORDS`), so the sentence stays
    checkable. |delta| ≤ tol (or a delta that rounds to zero at `fmt`) says `same` instead of picking a side."""
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or math.isnan(delta):
        raise TypeError(f"compare() needs a number, got {delta!r}")
    k = kind_of(unit, kind)
    up, down = WORDS[k]
    more, less = more or up[0], less or down[0]
    if direction(more, k) != 1 or direction(less, k) != -1:
        raise ValueError(f"for a {k} quantity, more= must be one of {up} and less= one of {down}; "
                         f"got more={more!r}, less={less!r}")
    sep = "" if unit in ("%", "x", "×", "") else " "
    size = format(abs(delta), fmt)
    tag = f", {kind}" if kind is not None and unit.strip() not in UNIT_KINDS else ""
    if abs(delta) <= tol or float(size) == 0:
        return f"{same} (Δ {format(0.0, fmt)}{sep}{unit}{tag})".replace("(Δ 0", "(Δ +0")
    word = more if delta > 0 else less
    sign = "+" if delta > 0 else "−"
    return f"{size}{sep}{unit} {word} (Δ {sign}{size}{sep}{unit}{tag})"


def ratio(new: float, old: float, *, kind: str, more: str | None = None, less: str | None = None,
          fmt: str = ".2f") -> str:
    """``"2.10x faster (Δ +110.0%, throughput)"`` for new/old of a quantity of `kind`: how many times, and which way."""
    if old == 0:
        raise ZeroDivisionError("ratio() needs a nonzero old value")
    r = new / old
    times = r if r >= 1 else 1 / r
    text = compare(100 * (r - 1), "%", kind=kind, more=more, less=less)
    return text if text.startswith("no different") else f"{times:{fmt}}x {text.split(' ', 1)[1]}"


class ClaimFailed(AssertionError):
    """A lesson's sentence is contradicted by the numbers it was computed from."""


CLAIM_METADATA = "minilora_claim"  # the key of a claim's display metadata in an executed notebook


def _number(value) -> object:
    """A plain Python value for printing and for the notebook's JSON metadata (tensors and numpy scalars too)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_number(v) for v in value]
    raise TypeError(f"claim() data must be numbers, strings or lists of them; got {type(value).__name__}")


class CheckedSentence(str):
    """The sentence a claim() checked. It is a plain str for reuse in later prose; as a cell's last value it shows
    nothing, because claim() has already shown it with its numbers."""

    def _ipython_display_(self) -> None:
        pass


def claim(text: str, condition, **data) -> CheckedSentence:
    """Print `text` (formatted with `data`) and the numbers it rests on; raise ClaimFailed when `condition` is false.

    ``claim("the loss falls from {first:.3f} to {last:.3f}, below chance ({chance:.3f})",
    last < chance, first=l0, last=l1, chance=math.log(V))``. `condition` must be a bool (a 0-d tensor or numpy
    bool is read with .item()): a number there would silently mean "nonzero". Returns the formatted sentence, so a
    later cell can reuse the wording the check backed."""
    if hasattr(condition, "item") and getattr(condition, "ndim", 0) == 0:
        condition = condition.item()
    if not isinstance(condition, bool):
        raise TypeError(f"claim() needs a bool condition (a comparison of the measured numbers), got "
                        f"{type(condition).__name__} {condition!r}")
    values = {k: _number(v) for k, v in data.items()}
    try:
        sentence = text.format(**data)
    except (KeyError, IndexError) as exc:
        raise KeyError(f"claim() text {text!r} names {exc} but no such keyword was given: pass it as {exc}=value")
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    line = f"{sentence}  [{shown}]" if shown else sentence
    if not condition:
        raise ClaimFailed(f"the lesson says: {sentence!r}, but its numbers do not support it ({shown or 'no data'}). "
                          "Reword the sentence from the new numbers or find what changed them.")
    _emit(line, {"text": sentence, "data": values})
    return CheckedSentence(sentence)


def _emit(line: str, record: dict) -> None:
    """In a notebook, a display output whose metadata marks it as a claim; in a script, a printed line."""
    from minilora.show import in_notebook
    if in_notebook():
        from IPython.display import display
        display({"text/plain": line}, raw=True, metadata={CLAIM_METADATA: record})
    else:
        print(line)


def cite(text: str, source: str) -> str:
    """A constant from elsewhere, quoted with where it comes from: ``"2-5x faster" (Unsloth README, …)``."""
    return f"“{text}” ({source})"

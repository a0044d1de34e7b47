"""Argument types with their valid ranges, and the errors every command reports in one line.

Each type function turns the text of one command-line value into a number inside its range or raises
`argparse.ArgumentTypeError` naming the range and the fix, so `minilora train --lora_alpha 0` stops at parse time,
before any model is loaded. Checks that need several arguments at once raise `UsageError` from a command's own
check step (also before loading). `minilora.cli.main` prints both as ``minilora: error: <problem> — <fix>``
and exits 2; errors found while working exit 1.
"""
from __future__ import annotations

import argparse
import math

SEED_LIMIT = 2 ** 32  # seeds feed numpy-style generators too: 0 <= seed < 2**32


class UsageError(ValueError):
    """The command line asks for something impossible or meaningless (exit code 2)."""


def _number(text: str, kind):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")


def int_at_least(low: int, why: str = ""):
    """An integer >= low."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}{' — ' + why if why else ''}")
        return value
    parse.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return parse


def finite_float(low: float, *, low_inclusive: bool, high: float | None = None, high_inclusive: bool = True,
                 why: str = ""):
    """A finite float in the interval from low to high (None: no upper bound); nan and inf are refused."""
    opening = "[" if low_inclusive else "("
    closing = "" if high is None else ("]" if high_inclusive else ")")
    interval = f"{opening}{low:g}, {'inf)' if high is None else f'{high:g}{closing}'}"

    def parse(text: str) -> float:
        value = _number(text, float)
        ok = math.isfinite(value) and (value >= low if low_inclusive else value > low)
        if ok and high is not None:
            ok = value <= high if high_inclusive else value < high
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}"
                                             f"{' — ' + why if why else ''}")
        return value
    parse.__name__ = f"number in {interval}"
    return parse


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {value}")
    return value


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


class TrackingStore(argparse._StoreAction):
    """argparse's plain ``store``, which also records that the option was typed (``namespace.given_``), so a
    command can tell an explicit value from a default and refuse settings that would do nothing."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        given = set(getattr(namespace, "given_", ()))
        namespace.given_ = given | {self.dest}


class TrackingStoreTrue(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.given_ = set(getattr(namespace, "given_", ())) | {self.dest}


def track_given(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make every argument added to ``parser`` from now on record itself in ``namespace.given_`` when typed."""
    parser.register("action", None, TrackingStore)
    parser.register("action", "store", TrackingStore)
    parser.register("action", "store_true", TrackingStoreTrue)
    return parser


def given(args, name: str) -> bool:
    """True when --name was typed on the command line (not just defaulted)."""
    return name in getattr(args, "given_", ())


def refuse_unused(args, unused: list[str], reason: str, fix: str) -> None:
    """Refuse options that were typed but have no effect in this run (e.g. --stride without --raw_text_file)."""
    typed = [f"--{n}" for n in unused if given(args, n)]
    if typed:
        it = "it" if len(typed) == 1 else "them"
        raise UsageError(f"{', '.join(typed)} {'has' if len(typed) == 1 else 'have'} no effect {reason} — "
                         f"{fix.format(it=it)}")

"""The `minilora` command. Each subcommand lives in its own module under minilora/commands/ and provides
``add_parser(subparsers)`` and ``run(args) -> int``.

Errors reach the terminal as one line, ``minilora: error: <problem> — <fix>``, with exit code 2 when the command
line itself is wrong (checked before anything is loaded) and 1 when something fails while working (a missing file,
a model of an unknown architecture, a diverging run). ``--debug`` (or ``MINILORA_DEBUG=1``) shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

SUBCOMMANDS = ("train", "chat", "exercises", "journal")
USAGE, RUNTIME = 2, 1
PACKAGE = Path(__file__).resolve().parent


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, not the whole usage block."""

    def error(self, message):
        hint = "" if " — " in message else f" — see `{self.prog} --help`"
        raise _ArgumentError(message + hint)


class _ArgumentError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="minilora",
        description="minilora: fine-tune small Llama-family models with LoRA/QLoRA, and work through the "
                    "six-week workbook (the sixth a bonus). Run `minilora <command> --help` for each command.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when something fails "
                                                              "(same as MINILORA_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"minilora.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"minilora.commands.{name}":
                raise
            continue  # a command that is not built yet simply does not appear
        module.add_parser(sub)
    for command in sub.choices.values():  # `minilora train --debug` works as well as `minilora --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback when something fails (same as MINILORA_DEBUG=1)")
    return parser


def _debug(argv) -> bool:
    return os.environ.get("MINILORA_DEBUG", "0") not in ("", "0") or "--debug" in argv


def _say(message: str) -> None:
    print(f"minilora: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 success, 1 runtime error, 2 usage error)."""
    from .commands.arguments import UsageError
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    try:
        args = build_parser().parse_args(argv)
    except _ArgumentError as e:
        _say(e)
        return USAGE
    try:
        return args.run(args) or 0
    except SystemExit as e:  # a command's own `raise SystemExit("...")`, or a nested exit code
        if isinstance(e.code, str):
            if debug:
                raise
            _say(e.code)
            return RUNTIME
        return 0 if e.code is None else e.code
    except KeyboardInterrupt:
        if debug:
            raise
        _say("interrupted — nothing after the last saved checkpoint was kept")
        return 130
    except UsageError as e:
        if debug:
            raise
        _say(e)
        return USAGE
    except Exception as e:
        if debug:
            raise
        _say(_describe(e))
        return RUNTIME


def _describe(e: Exception) -> str:
    """The message of an error minilora raised on purpose (it names the problem and the fix), or, for one raised
    elsewhere (torch, a bug), the error and a pointer to the traceback."""
    import torch
    if isinstance(e, torch.OutOfMemoryError):
        return ("out of memory — lower --per_device_train_batch_size or --max_seq_length, or turn on "
                "--use_gradient_checkpointing / --load_in_4bit")
    frames = traceback.extract_tb(e.__traceback__)
    raised_here = bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE)
    if raised_here and isinstance(e, (ValueError, TypeError, OSError, ImportError, RuntimeError)):
        return str(e) or type(e).__name__
    if isinstance(e, OSError) and e.filename:  # a missing or unreadable file, whoever opened it
        return f"{e.strerror or e}: {e.filename!r}"
    return (f"{type(e).__name__}: {e} — unexpected here: rerun with --debug (or MINILORA_DEBUG=1) to see the "
            "traceback, and report it if it looks like a bug")


if __name__ == "__main__":
    sys.exit(main())

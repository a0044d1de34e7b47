"""The `minilora` command. Each subcommand lives in its own module under minilora/commands/ and provides
``add_parser(subparsers)`` and ``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("train", "chat", "exercises", "journal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minilora",
        description="minilora: fine-tune small Llama-family models with LoRA/QLoRA, and work through the "
                    "five-week workbook. Run `minilora <command> --help` for each command.")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"minilora.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"minilora.commands.{name}":
                raise
            continue  # a command that is not built yet simply does not appear
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())

"""Subcommands of the `minilora` command (see minilora/cli.py)."""

"""The one way minilora writes files and directories: staged beside the target, then renamed into place.

A reader (or a crash, or Ctrl-C) never sees half a file or a directory mixing two saves:

- `write_file(path, fill)`: ``fill(tmp)`` writes ``.<name>.partial-<random>`` in the target's directory, then one
  ``os.replace`` publishes it.
- `write_dir(path, fill)`: ``fill(tmp)`` fills a staging directory ``.<name>.partial-<random>`` beside the target;
  then the old directory (if any) is renamed aside to ``.<name>.previous-<random>``, the staged one renamed into
  place, and only then is the previous version deleted. A crash between the two renames leaves both the previous
  version and the new one on disk, under names no loader picks up; `clean_leftovers` removes them at the next save.

Leftover names start with a dot and never end in a model file's extension, so a directory scan for ``*.gguf`` or
``*.safetensors`` cannot mistake them for a model.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

LEFTOVER_MARKERS = (".partial-", ".previous-")


def _leftover_prefixes(path: str) -> tuple[str, ...]:
    name = os.path.basename(os.path.abspath(path))
    return tuple(f".{name}{marker}" for marker in LEFTOVER_MARKERS)


def clean_leftovers(path: str) -> list[str]:
    """Delete what killed saves of ``path`` left beside it; returns the removed paths."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    prefixes, removed = _leftover_prefixes(path), []
    for entry in os.listdir(parent):
        if entry.startswith(prefixes):
            full = os.path.join(parent, entry)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                try:
                    os.remove(full)
                except FileNotFoundError:
                    pass
            removed.append(full)
    return removed


def write_file(path: str | os.PathLike, fill: Callable[[str], None], *, exclusive: bool = False) -> str:
    """Publish the file that ``fill(tmp_path)`` writes at ``path`` in one rename; nothing is left on failure.

    ``exclusive=True`` never replaces an existing file: the publish is a hard link, which fails if ``path``
    appeared meanwhile (FileExistsError), so a concurrent writer is never clobbered either."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; pass a file path")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.partial-", dir=parent)
    os.close(fd)
    try:
        fill(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a saved file should read like any other
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text(path: str | os.PathLike, text: str, *, exclusive: bool = False) -> str:
    def fill(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_file(path, fill, exclusive=exclusive)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> str:
    import json
    return write_text(path, json.dumps(obj, indent=indent))


def write_dir(path: str | os.PathLike, fill: Callable[[str], None]) -> str:
    """Replace the directory ``path`` as a whole by the one ``fill(staging_dir)`` writes (see the module doc)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is an existing file; pass a directory path (it is created if missing)")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    clean_leftovers(path)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    previous = None
    try:
        fill(staging)
        os.chmod(staging, 0o755)
        if os.path.exists(path):
            previous = tempfile.mkdtemp(prefix=f".{name}.previous-", dir=parent)
            os.rmdir(previous)  # only the name is wanted: rename needs it free
            os.replace(path, previous)
        os.replace(staging, path)
    except BaseException:
        if previous is not None and not os.path.exists(path) and os.path.isdir(previous):
            os.replace(previous, path)  # put the old version back
            previous = None
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return path

"""The one way minilora writes files and directories: staged beside the target, then renamed into place.

A reader (or a crash, or Ctrl-C) never sees half a file or a directory mixing two saves:

- `write_file(path, fill)`: ``fill(tmp)`` writes ``.<name>.partial-<random>`` in the target's directory, then one
  ``os.replace`` publishes it.
- `write_dir(path, fill)`: ``fill(tmp)`` fills a staging directory ``.<name>.partial-<random>`` beside the target;
  then the two directories trade places in one atomic ``renameat2(RENAME_EXCHANGE)`` (Linux), so ``path`` is at
  every instant either the whole old version or the whole new one, and only then is the old version deleted.
  Where that call is missing, the old directory is renamed aside to ``.<name>.previous-<random>`` and the staged
  one renamed into place: a crash between those two renames leaves no ``path`` for a moment, and the next save
  (or `recover`) puts the previous version back before doing anything else.
- `check_save_target(path, protected, overwrite)`: what a save must refuse before it writes anything: a target that
  is, or contains, a file the model was loaded from, and a non-empty target the caller did not ask to overwrite.

Staging names carry their writer's process id (``.<name>.partial-<pid>-<random>``), and a save cleans up only the
leftovers of writers that are gone: two processes saving to one path never delete each other's staging directory;
each swaps in its own whole version, the later one wins.

Leftover names start with a dot and never end in a model file's extension, so a directory scan for ``*.gguf`` or
``*.safetensors`` cannot mistake them for a model.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from typing import Callable, Iterable

LEFTOVER_MARKERS = (".partial-", ".previous-")


def _leftover_prefixes(path: str) -> tuple[str, ...]:
    name = os.path.basename(os.path.abspath(path))
    return tuple(f".{name}{marker}" for marker in LEFTOVER_MARKERS)


def _staging_prefix(name: str, marker: str) -> str:
    return f".{name}{marker}{os.getpid()}-"


def _writer_alive(tail: str) -> bool:
    """Whether the process that made a staged or set-aside copy still runs (it may still be using it); ``tail`` is
    the copy's name after its prefix (``<pid>-<random>``)."""
    pid = tail.split("-", 1)[0]
    if not pid.isdigit():
        return False  # a name without a writer's id: an older save's leftover
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def leftovers(path: str) -> list[str]:
    """What killed saves of ``path`` left beside it (staged ``.partial-`` and set-aside ``.previous-`` copies of
    writers that are gone; a running save's staging is its own)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    prefixes = _leftover_prefixes(path)
    found = []
    for entry in os.listdir(parent):
        prefix = next((p for p in prefixes if entry.startswith(p)), None)
        if prefix is not None and not _writer_alive(entry[len(prefix):]):
            found.append(os.path.join(parent, entry))
    return sorted(found)


def recover(path: str) -> str | None:
    """If a save was killed between its two renames (no ``path``, a ``.previous-`` copy beside it), put the
    previous version back; returns the restored path or None."""
    path = os.path.abspath(path)
    if os.path.lexists(path):
        return None
    previous = [p for p in leftovers(path) if LEFTOVER_MARKERS[1] in os.path.basename(p)]
    if len(previous) != 1:
        return None  # none, or several (which one was last is unknown): leave them for a person to pick
    os.replace(previous[0], path)
    return path


def clean_leftovers(path: str) -> list[str]:
    """Delete what killed saves of ``path`` left beside it (after `recover`); returns the removed paths."""
    recover(path)
    removed = []
    for full in leftovers(path):
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            try:
                os.remove(full)
            except FileNotFoundError:
                pass
        removed.append(full)
    return removed


class SaveTargetError(ValueError):
    """A save was asked to write where it would destroy the model it saves (or what it was loaded from)."""


def is_within(inner: str, outer: str) -> bool:
    """``inner`` is ``outer`` or a path below it (both already resolved)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_save_target(path: str | os.PathLike, protected: Iterable[str | os.PathLike] = (), overwrite: bool = False,
                      flag: str = "overwrite=True", is_dir: bool = True) -> None:
    """Refuse, before anything is written, a save to ``path`` that could destroy data.

    - ``path`` equal to, or a directory containing, one of ``protected`` (the files or directories the model was
      loaded from): replacing it would delete the weights being saved. A path *inside* a model directory is
      allowed (a new sub-directory destroys nothing).
    - ``path`` an existing non-empty directory, or an existing file, unless ``overwrite``: it is then replaced as a
      whole. ``flag`` names the switch in the message (``--overwrite_output_dir`` on the command line).
    - ``is_dir``: the save writes a directory, so an existing file at ``path`` is a mistake (NotADirectoryError).
    """
    target = os.path.realpath(os.fspath(path))
    for source in protected:
        src = os.path.realpath(os.fspath(source))
        if is_within(src, target):
            how = "is" if src == target else "contains"
            raise SaveTargetError(f"refusing to save to {os.fspath(path)!r}: it {how} {os.fspath(source)!r}, which "
                                  "this model was loaded from, and a save replaces its target as a whole (the "
                                  "weights would be lost). Save to a new path (a sub-directory of it is fine).")
    if is_dir and os.path.exists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"{os.fspath(path)!r} is an existing file; pass a directory path (it is created "
                                 "if missing)")
    if overwrite:
        return
    if os.path.isdir(target) and os.listdir(target):
        raise FileExistsError(f"{os.fspath(path)!r} already exists and is not empty; pass {flag} to replace it as "
                              "a whole (nothing of its old content is kept), or save to a new path")
    if os.path.isfile(target):
        raise FileExistsError(f"{os.fspath(path)!r} already exists; pass {flag} to replace it, or save to a new path")


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), a)


def write_file(path: str | os.PathLike, fill: Callable[[str], None], *, exclusive: bool = False) -> str:
    """Publish the file that ``fill(tmp_path)`` writes at ``path`` in one rename; nothing is left on failure.

    ``exclusive=True`` never replaces an existing file: the publish is a hard link, which fails if ``path``
    appeared meanwhile (FileExistsError), so a concurrent writer is never clobbered either."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; pass a file path")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    if not exclusive:  # an exclusive writer may race a concurrent one: never delete another writer's staging file
        clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(name, ".partial-"), dir=parent)
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
    staging = tempfile.mkdtemp(prefix=_staging_prefix(name, ".partial-"), dir=parent)
    previous = None
    try:
        fill(staging)
        os.chmod(staging, 0o755)
        if os.path.isdir(path) and _exchange(staging, path):
            shutil.rmtree(staging, ignore_errors=True)  # the staging name now holds the old version
            return path
        if os.path.exists(path):
            previous = tempfile.mkdtemp(prefix=_staging_prefix(name, ".previous-"), dir=parent)
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

"""`show(obj)`: the library's own source, shown in a lesson so the lesson can never drift from the code.

A lesson that pastes code goes stale the day the code changes; one that shows it reads the running version. `show`
takes a whole function, method, class or module, or a marked region inside one::

    # region accumulate
    ...the lines a lesson wants to point at...
    # endregion

(``show(Trainer.training_step, region="accumulate")``). Regions are found by their marker comments, never by
searching the text for a line the lesson expects to be there: a region that disappears is an error naming it,
not a silently shorter excerpt. In a notebook the source is highlighted (IPython's `Code`, Pygments); in a script
it is printed as plain text.
"""
from __future__ import annotations

import inspect
import re
import textwrap

SOURCE_METADATA = "minilora_source"  # marks a shown source in an executed notebook (the prose checks read it)
_START = re.compile(r"^\s*# region (\S+)\s*$")
_END = re.compile(r"^\s*# endregion\b")


def source_of(obj, region: str | None = None) -> str:
    """The source text of `obj` (a Triton kernel shows the Python function it compiles), or of one marked region
    of it, dedented. Marker comments themselves are left out."""
    target = getattr(obj, "fn", obj)  # triton.JITFunction keeps the Python function in .fn
    try:
        text = inspect.getsource(target)
    except (TypeError, OSError) as exc:
        raise TypeError(f"show() needs a function, method, class or module defined in a .py file; "
                        f"{obj!r} has no source to show ({exc})") from None
    if region is None:
        return textwrap.dedent(_without_markers(text))
    return textwrap.dedent(_region(text, region, getattr(target, "__qualname__", getattr(target, "__name__", "?"))))


def _without_markers(text: str) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True) if not (_START.match(ln) or _END.match(ln)))


def _region(text: str, name: str, owner: str) -> str:
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if (m := _START.match(ln)) and m[1] == name]
    if len(starts) != 1:
        found = sorted({m[1] for ln in lines if (m := _START.match(ln))})
        what = "no" if not starts else f"{len(starts)}"
        raise ValueError(f"{owner} has {what} '# region {name}' marker"
                         + ("s; a region name must be unique" if starts else
                            f"; its regions are: {', '.join(found) or 'none'}. Add the marker comments "
                            f"'# region {name}' / '# endregion' around the lines to show"))
    depth, body = 0, []
    for ln in lines[starts[0] + 1:]:
        if _START.match(ln):
            depth += 1
            continue
        if _END.match(ln):
            if depth == 0:
                return "".join(body)
            depth -= 1
            continue
        body.append(ln)
    raise ValueError(f"{owner}: '# region {name}' has no matching '# endregion'")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (rich output is shown), False in a script or a plain IPython shell."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show(*objs, region: str | None = None) -> None:
    """Show the source of each object (highlighted in a notebook, plain text in a script); see the module doc."""
    if not objs:
        raise TypeError("show() needs at least one function, method, class or module")
    if region is not None and len(objs) != 1:
        raise TypeError("show(obj, region=NAME) shows one region of one object; call it once per object")
    for obj in objs:
        text = source_of(obj, region)
        if in_notebook():
            from IPython.display import Code, display
            name = getattr(getattr(obj, "fn", obj), "__qualname__", getattr(obj, "__name__", "?"))
            display(Code(text, language="python"), metadata={SOURCE_METADATA: {"name": name, "region": region}})
        else:
            print(text)

"""Chat templates, rendered in a Jinja sandbox with a time limit and an output size limit.

A chat template comes from a downloaded file (tokenizer_config.json, a GGUF's metadata), so it is untrusted code:

- the sandbox (`ImmutableSandboxedEnvironment`) keeps it away from Python objects (no ``__class__``, no
  ``__globals__``, no mutating methods);
- a **deadline** (`TIME_LIMIT_S` seconds of the rendering thread's CPU time) stops loops that never end or run for
  hours: it is checked on every Python line the compiled template executes (through `sys.settrace` while the
  template renders — when a debugger or coverage tool already traces, on every attribute access, call and output
  chunk instead), and at every function call of Jinja's own compiler while the template compiles (a template of 300k
  expressions would otherwise compile for minutes; under a debugger's tracer only the size limit bounds compiling);
- a **size limit** (`MAX_CHARS`) refuses output, and any single string or list the template builds (``'x' * 10**9``,
  ``'x'|center(10**9)``), that is larger than any real prompt, before it is allocated where it can be foreseen.

A template that breaks a limit, or recurses without end, raises `ChatTemplateLimitError` (a ValueError) saying which.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
import time
from datetime import datetime

_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
TIME_LIMIT_S = 1.0  # CPU seconds; real chat templates render in milliseconds
MAX_CHARS = 10_000_000  # ~2.5 M tokens of prompt; anything larger is a template gone wrong
MAX_EXPONENT = 1024


class ChatTemplateLimitError(ValueError):
    """The chat template ran too long or produced too much."""


def _too_big(n: int) -> ChatTemplateLimitError:
    return ChatTemplateLimitError(f"the chat template builds a value of {n:,} items or characters; the limit is "
                                  f"{MAX_CHARS:,} (a hostile or broken template)")


def _check_size(value):
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > MAX_CHARS:
        raise _too_big(len(value))
    return value


def _check_ints(args, kwargs):
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CHARS:
            raise _too_big(abs(a))


def _bounded(func):
    """A filter or global whose integer arguments (widths, counts) and result are size-checked."""
    @functools.wraps(func)  # keeps jinja_pass_arg (pass_context, pass_environment…)
    def wrapper(*args, **kwargs):
        _check_ints(args, kwargs)
        return _check_size(func(*args, **kwargs))
    return wrapper


class _DeadlinePassed(BaseException):
    """Time is up. A BaseException while it travels through Jinja, so that no ``except Exception`` of the compiler
    (its optimizer turns any error into "cannot fold this constant") swallows it; `_deadline` turns it into the
    ChatTemplateLimitError the caller sees."""


class _Deadline:
    """A limit on the CPU time the template's thread spends. The clock looked at on every check is the cheap wall
    clock; only when it says time is up is the thread's CPU time asked (a system call), so a busy machine — or a
    laptop put to sleep mid-render — does not stop an honest template: the deadline moves by the time not spent."""

    def __init__(self):
        self.stop()

    def start(self, seconds: float) -> None:
        self.at, self.cpu_at = time.monotonic() + seconds, time.thread_time() + seconds

    def stop(self) -> None:
        self.at = self.cpu_at = float("inf")

    def check(self):
        if time.monotonic() > self.at:
            cpu_left = self.cpu_at - time.thread_time()
            if cpu_left > 0:  # the wall clock ran on while this thread waited for a core
                self.at = time.monotonic() + cpu_left
                return
            raise _DeadlinePassed  # and on every check after: one swallowed raise is not the end


def _environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    deadline = _Deadline()

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def call_binop(self, context, operator, left, right):
            deadline.check()
            if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise ChatTemplateLimitError(f"the chat template raises to the power {right}; the limit is "
                                             f"{MAX_EXPONENT}")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                        raise _too_big(len(seq) * n)
            return _check_size(super().call_binop(context, operator, left, right))

        def call(__self, __context, __obj, *args, **kwargs):  # jinja's own signature
            deadline.check()
            _check_ints(args, kwargs)
            return _check_size(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj, attribute):
            deadline.check()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            deadline.check()
            return super().getitem(obj, argument)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class NoOtherTemplates(jinja2.BaseLoader):  # without any loader Jinja fails with a bare "no loader" TypeError
        def get_source(self, environment, template):
            raise ValueError(f"the chat template includes, imports or extends the template {template!r}; a chat "
                             "template must be self-contained (minilora reads no other template files)")

    # trim_blocks/lstrip_blocks: a {% tag %} line leaves no stray newline or indent (what templates assume)
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                         loader=NoOtherTemplates())
    env.filters["tojson"] = tojson
    env.filters = {name: _bounded(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["range"] = _bounded(safe_range)
    env.deadline = deadline
    return env


_ENV = None
_TEMPLATES: dict[str, object] = {}


@contextlib.contextmanager
def _deadline(every_frame: bool):
    """The time limit for one compile or render: `_Deadline.check` runs on every line of the template's own code,
    and while compiling (``every_frame=True``) also at every function call of any code: Jinja's lexer, parser and
    code generator are Python, and a template of 300k expressions keeps them busy for minutes."""
    deadline = _ENV.deadline
    deadline.start(TIME_LIMIT_S)

    def trace(frame, event, arg):  # called at every Python function call while the tracer is set
        # A call into a generator may be its close() (`next(g for g in ...)` drops one unfinished): an exception raised
        # there is printed and ignored, and Python removes the tracer with it. Generators are checked on their lines.
        if not frame.f_code.co_flags & _GENERATOR_FLAGS:
            deadline.check()
        # the template's own code is checked on every line (a loop runs inside one frame); the compiler only at
        # every call, which its recursive-descent parser makes all the time (line checks would slow it several-fold)
        return trace_lines if frame.f_code.co_filename == "<template>" else None

    def trace_template(frame, event, arg):  # rendering: only the template's own frames are looked at
        return trace(frame, event, arg) if frame.f_code.co_filename == "<template>" else None

    def trace_lines(frame, event, arg):
        if event == "line":  # not on "exception"/"return": frames unwinding from the first raise stay quiet
            deadline.check()
        return trace_lines

    traced = sys.gettrace() is None
    if traced:
        sys.settrace(trace if every_frame else trace_template)
    try:
        yield deadline
    except _DeadlinePassed:
        raise ChatTemplateLimitError(f"the chat template ran for more than {TIME_LIMIT_S} s of CPU time and was "
                                     "stopped (a loop that does not end, or a hostile template)") from None
    except RecursionError:  # {% macro f() %}{{ f() }}{% endmacro %}, or thousands of nested brackets
        raise ChatTemplateLimitError("the chat template recurses or nests too deeply (a macro that calls itself "
                                     "without end, or brackets nested thousands deep): a broken or hostile "
                                     "template") from None
    finally:
        if traced:
            sys.settrace(None)
        deadline.stop()


def compile_template(template: str):
    """The compiled template (cached); a syntax error is a ValueError. Compiling runs under the same time and size
    limits as rendering."""
    global _ENV
    if template not in _TEMPLATES:
        import jinja2
        if _ENV is None:
            _ENV = _environment()
        if not isinstance(template, str):
            raise TypeError(f"a chat template is a Jinja string, got {type(template).__name__}")
        if len(template) > MAX_CHARS:
            raise ChatTemplateLimitError(f"the chat template is {len(template):,} characters long; the limit is "
                                         f"{MAX_CHARS:,} (real templates are a few thousand)")
        try:
            with _deadline(every_frame=True):
                _TEMPLATES[template] = _ENV.from_string(template)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"the chat template is not valid Jinja: {e}") from e
    return _TEMPLATES[template]


def render(template: str, **variables) -> str:
    """Render ``template`` with ``variables`` under the time and size limits of this module."""
    compiled = compile_template(template)
    parts, size = [], 0
    with _deadline(every_frame=False) as deadline:
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            if size > MAX_CHARS:
                raise _too_big(size)
            parts.append(chunk)
            deadline.check()
    return "".join(parts)

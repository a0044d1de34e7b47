"""Execute a jupytext lesson as a notebook, once per test session, and keep the executed copy for the site.

Both tests/test_lessons.py and tests/test_docs_site.py call :func:`execute_lesson`; whichever runs first executes the
lesson, the other reuses the result, so every lesson runs exactly once per pytest session whatever the test order.
The executed notebook is written to ``docs/lessons/<name>.ipynb`` (gitignored), which the mkdocs site renders as is.
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import sys
import tempfile
import time
from dataclasses import dataclass

from minilora.course import lesson_files as course_lesson_files

ROOT = pathlib.Path(__file__).resolve().parents[2]
LESSONS = ROOT / "lessons"
EXECUTED = ROOT / "docs" / "lessons"
CELL_TIMEOUT_S = int(os.environ.get("MINILORA_CELL_TIMEOUT", "300"))  # a guard against hangs; lessons aim at ~1 min


def lesson_files() -> list[pathlib.Path]:
    """Every lessons/*.py in course order (minilora/course.py holds the order)."""
    return course_lesson_files(ROOT)


class LessonFailed(AssertionError):
    """A lesson cell raised or timed out; the message names the lesson, the cell and the error."""


@dataclass
class LessonResult:
    name: str
    notebook_path: pathlib.Path
    seconds: float
    error: str | None = None


_results: dict[str, LessonResult] = {}
_futures: dict[pathlib.Path, concurrent.futures.Future] = {}
_pool = None
# 1 = one lesson at a time, in this process (the default: two torch processes on two cores can slow a training
# cell down many times over); 2 = two lessons at once, each in its own process.
WORKERS = int(os.environ.get("MINILORA_LESSON_WORKERS", "1"))


def prefetch(paths) -> None:
    """Start executing these lessons in the background, WORKERS at a time (MINILORA_LESSON_WORKERS, default 1).

    With WORKERS > 1 each runs in its own process (python tests/helpers/lesson_runner.py LESSON RESULT.json) and
    execute_lesson() waits for its result. With WORKERS=1 (the default) this does nothing and execute_lesson() runs
    the lessons one by one, in this process.
    """
    global _pool
    if WORKERS <= 1:
        return
    import concurrent.futures
    for path in paths:
        path = pathlib.Path(path).resolve()
        if path in _futures or path.stem in _results:
            continue
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="lesson")
        _futures[path] = _pool.submit(_execute_in_subprocess, path)


def _execute_in_subprocess(path: pathlib.Path) -> LessonResult:
    import json
    import subprocess
    with tempfile.TemporaryDirectory(prefix="minilora-lesson-") as tmp:
        report = pathlib.Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, __file__, str(path), str(report)], cwd=ROOT,
                              capture_output=True, text=True)
        if not report.exists():
            return LessonResult(path.stem, EXECUTED / f"{path.stem}.ipynb", 0.0,
                                f"the lesson runner crashed on {path.name} (exit code {proc.returncode}):\n"
                                f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        data = json.loads(report.read_text(encoding="utf-8"))
    return LessonResult(path.stem, pathlib.Path(data["notebook_path"]), data["seconds"], data["error"])


def _cell_line(py_text: str, source: str) -> int | None:
    """1-based line in the .py file where a cell's first source line appears (for a readable error)."""
    first = next((ln for ln in source.splitlines() if ln.strip()), None)
    if first is None:
        return None
    for i, line in enumerate(py_text.splitlines(), 1):
        if line.rstrip() == first.rstrip():
            return i
    return None


def _describe_failure(path: pathlib.Path, nb, exc: BaseException) -> str:
    """Name the failing cell: its number among code cells, its line in the .py, its first lines, and the error."""
    py_text = path.read_text(encoding="utf-8")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    failing = None
    for number, cell in enumerate(code_cells, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                failing = (number, cell, f"{out.get('ename')}: {out.get('evalue')}")
    if failing is None:  # a timeout or a dead kernel leaves no error output: the last cell that started is it
        done = [n for n, c in enumerate(code_cells, 1) if c.get("execution_count")]
        number = done[-1] if done else 1  # the cell that started last (execution_count is set when it starts)
        cell = code_cells[number - 1] if code_cells else None
        failing = (number, cell, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
    number, cell, error = failing
    if isinstance(exc, TimeoutError):  # nbclient interrupts the kernel, so the cell shows a KeyboardInterrupt
        error = str(exc)
    source = cell.source if cell is not None else ""
    line = _cell_line(py_text, source)
    excerpt = "\n".join("    " + ln for ln in source.splitlines()[:8])
    where = f"line {line} of {path.relative_to(ROOT)}" if line else str(path.relative_to(ROOT))
    return (f"lesson {path.name} failed in code cell {number} ({where}):\n{excerpt}\n--> {error}\n"
            f"Run it on its own to see the whole traceback: python {path.relative_to(ROOT)}")


def _write_atomically(nb, target: pathlib.Path) -> None:
    import nbformat
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".ipynb.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def execute_lesson(path: pathlib.Path) -> LessonResult:
    """Run one lesson as a notebook (repo root as working directory, inline figures) and save the executed copy.

    Runs at most once per process; a failure is remembered and raised again as LessonFailed to every caller.
    On failure the stale executed copy is removed, so the site never shows outputs of an older version.
    """
    path = pathlib.Path(path).resolve()
    name = path.stem
    if name not in _results:
        future = _futures.get(path)
        _results[name] = future.result() if future is not None else _execute(path)
    result = _results[name]
    if result.error:
        raise LessonFailed(result.error)
    return result


_KERNEL = "minilora-lessons"


def _kernel_for_this_python() -> str:
    """A kernelspec that runs THIS interpreter (the venv's), so a `python3` kernel the user registered elsewhere
    (another Python, without minilora) can never be picked up instead."""
    if os.environ.get("MINILORA_KERNEL_DIR") is None:
        import atexit
        import json
        import shutil
        data = pathlib.Path(tempfile.mkdtemp(prefix="minilora-jupyter-"))
        atexit.register(shutil.rmtree, data, True)
        spec = data / "kernels" / _KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (minilora)", "language": "python"}))
        os.environ["MINILORA_KERNEL_DIR"] = str(data)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (str(data), os.environ.get("JUPYTER_PATH", "")) if p)
    return _KERNEL


def _execute(path: pathlib.Path) -> LessonResult:
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    target = EXECUTED / f"{path.stem}.ipynb"
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # Figures inline (PNG outputs in the notebook), whatever MPLBACKEND the caller's shell has.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    python_path = os.environ.get("PYTHONPATH", "")
    if str(ROOT) not in python_path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), python_path) if p)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=_kernel_for_this_python(), allow_errors=False,
                            resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, CellTimeoutError):
            exc = TimeoutError(f"a cell ran longer than {CELL_TIMEOUT_S} s (MINILORA_CELL_TIMEOUT); "
                               f"lessons must finish in about 3 minutes on 2 CPU cores")
        return LessonResult(path.stem, target, time.perf_counter() - start, _describe_failure(path, nb, exc))
    seconds = time.perf_counter() - start
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("minilora", {})["execution_seconds"] = round(seconds, 1)
    _write_atomically(nbformat.from_dict(nb), target)
    return LessonResult(path.stem, target, seconds)


if __name__ == "__main__":  # python tests/helpers/lesson_runner.py LESSON.py RESULT.json  (what prefetch() runs)
    import json
    lesson, report = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    outcome = _execute(lesson.resolve())
    report.write_text(json.dumps({"notebook_path": str(outcome.notebook_path), "seconds": outcome.seconds,
                                  "error": outcome.error}), encoding="utf-8")

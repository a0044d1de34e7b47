"""mkdocs hooks: build the parts of the site that must stay true as the course grows.

- Lessons: the nav lists every lesson (lessons/*.py) in course order (minilora/course.py). An executed lesson
  (docs/lessons/<name>.ipynb, written by tests/test_lessons.py or `make site`) is rendered with its outputs; one not
  executed yet gets a placeholder page saying what to run, and the build logs a warning (so `mkdocs build --strict`
  fails on it), as it does for an executed notebook older than its source. A notebook holding an error output stops
  the build.
- Exercises: the table on exercises.md is generated from the stub files in exercises/weekN/.
- Benchmarks: benchmarks.md shows every benchmarks/results/*.json (read through benchmarks.harness.load_results: one
  schema, rows with the median and [min–max]) as a table and every PNG there as a figure.
- API: api.md gets one mkdocstrings block per module of the minilora package that exists.
- Unsloth map: a link to a lesson page that has not been executed yet is shown as plain text (tests/test_docs_site.py
  checks that every row's files and lessons exist).
"""
from __future__ import annotations

import ast
import html
import json
import logging
import pathlib
import re
import subprocess

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

from minilora.course import discover_exercises, lesson_files, lesson_week

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXECUTED = DOCS / "lessons"
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("mkdocs.hooks.minilora")



# ---------------------------------------------------------------------------------------------------- lessons
def _notebook_title(path: pathlib.Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem.replace("_", " ")


def _error_outputs(path: pathlib.Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for number, cell in enumerate((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"code cell {number}: {out.get('ename')}: {out.get('evalue')}")
    return found


def lessons() -> list[dict]:
    """Every lesson source in course order, with its executed notebook (or None) and title."""
    found = []
    for source in lesson_files(ROOT):
        executed = EXECUTED / f"{source.stem}.ipynb"
        ok = executed.is_file()
        found.append({
            "name": source.stem, "source": source,
            "notebook": executed if ok else None,
            "stale": ok and executed.stat().st_mtime < source.stat().st_mtime,
            "title": _notebook_title(executed) if ok else source.stem.replace("_", " "),
        })
    return found


NOT_EXECUTED = "run `make site` (or `pytest tests/test_lessons.py`) first"


def on_config(config):
    course = lessons()
    waiting = [lesson["name"] for lesson in course if lesson["notebook"] is None]
    if course and len(waiting) == len(course):
        log.warning(f"no lesson has been executed yet, so every lesson page is a placeholder: {NOT_EXECUTED}; "
                    f"it executes each lessons/*.py once and saves its outputs to docs/lessons/ for the site")
    elif waiting:
        log.warning(f"{len(waiting)} lesson(s) not executed yet, shown as placeholder pages: {', '.join(waiting)}: "
                    f"{NOT_EXECUTED}")
    for lesson in course:
        if lesson["stale"]:
            log.warning(f"docs/lessons/{lesson['name']}.ipynb is older than lessons/{lesson['name']}.py: "
                        f"execute the lessons again (`pytest tests/test_lessons.py`)")
        elif lesson["notebook"] is not None:
            errors = _error_outputs(lesson["notebook"])
            if errors:
                raise PluginError(f"executed lesson {lesson['name']} holds error output ({'; '.join(errors)}): "
                                  f"fix the lesson and execute it again")
    entries = [{"Overview": "lessons/index.md"}] + [
        {lesson["title"]: f"lessons/{lesson['name']}.ipynb" if lesson["notebook"] else f"lessons/{lesson['name']}.md"}
        for lesson in course]
    nav = config.get("nav") or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and "Lessons" in item:
            nav[i] = {"Lessons": entries}
            break
    else:
        nav.append({"Lessons": entries})
    return config


def _placeholder(lesson: dict) -> str:
    """The page of a lesson that has not been executed: what to run to see it, and where its source is."""
    return f"""# {lesson['title']}

!!! warning "This lesson has not been executed yet"
    The site shows each lesson with the outputs and figures of a real run, and this one has not run yet:
    {NOT_EXECUTED}, then build the site again. Meanwhile its source is `lessons/{lesson['name']}.py`
    (`python lessons/{lesson['name']}.py` runs it; `make lab` opens it as a notebook).
"""


def _lessons_index() -> str:
    rows = []
    for lesson in lessons():
        if lesson["notebook"]:
            nb = json.loads(lesson["notebook"].read_text(encoding="utf-8"))
            seconds = nb.get("metadata", {}).get("minilora", {}).get("execution_seconds")
            took = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
            rows.append(f"| [{lesson['title']}]({lesson['name']}.ipynb) | `lessons/{lesson['name']}.py` | {took} |")
        else:
            rows.append(f"| [{lesson['title']}]({lesson['name']}.md) (not executed yet: {NOT_EXECUTED}) "
                        f"| `lessons/{lesson['name']}.py` | |")
    table = "\n".join(["| Lesson | Source | Ran in (CPU) |", "|---|---|---|", *rows]) if rows else \
        "*No lessons have been written yet.*"
    return f"""# Lessons

Every lesson is a jupytext `.py` file in `lessons/`. It runs as a plain script
(`python lessons/week1_lora.py` from the repository root) and opens as a notebook in JupyterLab (`make lab`).
The pages below show each lesson exactly as the test suite executed it on a CPU, with its printed numbers and
figures; every number in the prose is computed in a cell above it.

Work through them in order, one a day or two. Each lesson opens with its goals and the Unsloth files it explains,
and ends with its exercises (`pytest -m exN_M`) and a prompt for your [journal](../journal.md).

{table}
"""


# ---------------------------------------------------------------------------------------------------- exercises
def _stubbed_functions(text: str) -> list[str]:
    """Functions (and methods) of a stub whose body raises NotImplementedError: what the learner writes."""
    found = [node for node in ast.walk(ast.parse(text))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and any(isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n) for n in ast.walk(node))]
    return [node.name for node in sorted(found, key=lambda node: node.lineno)]


def _committed_stub(path: pathlib.Path) -> str | None:
    """The newest committed version of a stub that is still a stub (so a learner's filled-in copy, committed or
    not, still shows what the exercise asks for); None outside a git checkout."""
    rel = path.relative_to(ROOT).as_posix()
    try:
        commits = subprocess.run(["git", "log", "--format=%H", "-n", "20", "--", rel], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60).stdout.split()
        for commit in commits:
            text = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60).stdout
            if _stubbed_functions(text):
                return text
    except (OSError, subprocess.SubprocessError, SyntaxError):
        pass
    return None


def _stub_info(path: pathlib.Path, text: str | None = None) -> tuple[list[str], str | None]:
    """(functions the learner writes, the lesson the stub points to) — the same before and after the learner
    has written them: the names come from the stub as committed, plus any still raising in the working copy
    (`text`, read from `path` when not given)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    try:
        current = _stubbed_functions(text)
    except SyntaxError:  # a learner's half-written file must not break the site
        current = []
    committed = _committed_stub(path) or ""
    funcs = list(dict.fromkeys(_stubbed_functions(committed) + current))
    m = re.search(r"lessons/(\w+)\.py", text) or re.search(r"lessons/(\w+)\.py", committed)
    return funcs, (m[1] if m else None)


def _exercises_table() -> str:
    executed = {lesson["name"] for lesson in lessons() if lesson["notebook"]}
    rows = ["| Exercise | What you build | You write | Lesson to read first | Run |", "|---|---|---|---|---|"]
    for e in discover_exercises(ROOT):
        funcs, lesson = _stub_info(e.stub)
        if lesson in executed:
            lesson_cell = f"[{lesson}](lessons/{lesson}.ipynb)"
        else:
            lesson_cell = f"`lessons/{lesson}.py`" if lesson else ""
        rows.append(f"| {e.label} | {html.escape(e.title)} | {', '.join(f'`{f}`' for f in funcs)} "
                    f"(`exercises/week{e.week}/{e.stub.name}`) | {lesson_cell} | `pytest -m {e.marker}` |")
    if len(rows) == 2:
        return "*No exercises yet.*"
    return "\n".join(rows)


def _roadmap_cells(markdown: str) -> str:
    """Fill the roadmap's per-week cells with the lessons and exercises that exist."""
    course = lessons()
    found = discover_exercises(ROOT)

    def lessons_of(m):
        week = int(m[1])
        cells = [f"[{lesson['title']}](lessons/{lesson['name']}.ipynb)" if lesson["notebook"]
                 else f"`lessons/{lesson['name']}.py`"
                 for lesson in course if lesson_week(lesson["name"]) == week]
        return "<br>".join(cells) or "—"

    def exercises_of(m):
        labels = [e.label for e in found if e.week == int(m[1])]
        return f"[{', '.join(labels)}](exercises.md)" if labels else "—"
    markdown = re.sub(r"<!-- lessons-week-(\d+) -->", lessons_of, markdown)
    return re.sub(r"<!-- exercises-week-(\d+) -->", exercises_of, markdown)


# ---------------------------------------------------------------------------------------------------- benchmarks
# Extras shown as columns when a result's rows carry them (everything else stays in the JSON).
_EXTRA_COLUMNS = (("tb_s", "TB/s", "{:.2f}"), ("pct_of_copy", "% of copy", "{:.0f}%"), ("tflops", "TFLOP/s", "{:.0f}"),
                  ("tok_s", "tokens/s", "{:,.0f}"), ("mfu", "MFU", "{:.1%}"), ("seq", "tokens", "{:,}"),
                  ("loss", "loss", "{:.3f}"), ("predicted_peak_gib", "predicted peak GiB", "{:.2f}"),
                  ("x_hf_on", "× HF ckpt on", "{:.2f}x"), ("x_hf_off", "× HF ckpt off", "{:.2f}x"),
                  ("slowdown_vs_all_on", "time ÷ all on", "{:.3f}"), ("error", "error", "{}"))


def _cell(value) -> str:
    return html.escape(str(value)).replace("|", "\\|")


def _fmt(value, pattern: str) -> str:
    if value is None:
        return "—"
    try:
        return _cell(pattern.format(value))
    except (TypeError, ValueError):
        return _cell(value)


def _render_result(path: pathlib.Path, data: dict) -> str:
    """One results file (schema of benchmarks/harness.py): what, where, when, with which versions, then its rows
    with the median and the [min–max] range over every timed repetition."""
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    parts = [f"### {html.escape(data['benchmark'])} — {html.escape(path.stem)}", "",
             f"**card** {_cell(data['card'])} · **date** {_cell(data['date'])} · **commit** "
             f"`{_cell(data['git_commit'])}`", "", f"**versions** {_cell(versions)}", ""]
    if data.get("provenance"):
        parts += [f"**provenance** {_cell(data['provenance'])}", ""]
    if data["notes"]:
        parts += [f"<small>{_cell(data['notes'])}</small>", ""]
    extras = [c for c in _EXTRA_COLUMNS if any(r.get(c[0]) is not None for r in data["rows"])]
    header = ["what", "implementation", "median ms", "[min–max] ms", "reps", "peak GiB"] + [c[1] for c in extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in data["rows"]:
        span = "—" if not r["reps"] else "not recorded" if r.get("converted") else \
            f"[{r['min_ms']:.3f}–{r['max_ms']:.3f}]"
        cells = [_cell(r["name"]), _cell(r["impl"]), _fmt(r["median_ms"], "{:.3f}"), span, str(r["reps"]),
                 _fmt(r["peak_gib"], "{:.3f}")] + [_fmt(r.get(key), pattern) for key, _, pattern in extras]
        lines.append("| " + " | ".join(cells) + " |")
    parts += lines + _targets(data.get("targets")) + ["", f"<small>Command: `{_cell(data['command'])}` · source: "
                          f"`benchmarks/results/{path.name}`</small>", ""]
    return "\n".join(parts)


def _targets(targets) -> list[str]:
    """The targets a frontier file states it met or missed (benchmarks/bench_frontier.py), as a short table."""
    if not targets:
        return []
    lines = ["", "| target | memory limit | fastest row within it | speed-up | wanted | met |", "|---|---|---|---|---|---|"]
    for t in targets:
        speed = " / ".join(f"{t[k]:.2f}x vs HF {k[-3:].strip('_')}" for k in ("x_hf_on", "x_hf_off")
                           if t.get(k) is not None) or "—"
        wanted = " / ".join(f"{t[k]}x" for k in ("wanted_x_hf_on", "wanted_x_hf_off") if t.get(k) is not None)
        limit = f"{t['memory_limit_gib']:.2f} GiB ({t['limit']})" if t.get("memory_limit_gib") else "—"
        met = {True: "met", False: "not met", None: "not measured"}[t.get("met")]
        lines.append(f"| {_cell(t['target'])} | {_cell(limit)} | {_cell(t.get('best_impl') or '—')} | {speed} | "
                     f"{wanted or '—'} | {met} |")
    return lines


def _benchmarks_section() -> str:
    from benchmarks.harness import ResultsSchemaError, load_results
    results = sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []
    images = sorted(RESULTS.glob("*.png")) if RESULTS.is_dir() else []
    if not results and not images:
        return "*No benchmark results have been recorded yet (benchmarks/results/ is empty).*"
    parts = ["## Results\n"] if results else []
    for path in results:
        try:
            data = load_results(path)
        except ResultsSchemaError as e:
            raise PluginError(f"benchmarks/results/{path.name}: {e}") from e
        parts.append(_render_result(path, data))
    if images:
        parts.append("## Plots\n")
        for image in images:
            parts.append(f"### {image.stem}\n\n![{image.stem}](benchmarks/{image.name})\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- API
def _api_page() -> str:
    modules = []
    for path in sorted((ROOT / "minilora").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if path.name == "__main__.py" or any(part.startswith((".", "_")) and part != "__init__"
                                             for part in rel.parts):
            continue
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules.append(name)
    blocks = [f"::: {name}\n" for name in modules]
    return ("# API reference\n\nGenerated from the docstrings of every module in the `minilora` package; each "
            "module's own docstring comes first.\n\n" + "\n".join(blocks))


# ---------------------------------------------------------------------------------------------------- mkdocs events
def on_files(files: Files, config) -> Files:
    known = {lesson["name"] for lesson in lessons()}
    for file in list(files):
        src = file.src_uri
        # An executed notebook whose lesson source is gone (renamed or removed) is not part of the course.
        if src.startswith("lessons/") and src.endswith(".ipynb") and pathlib.PurePosixPath(src).stem not in known:
            files.remove(file)
    files.append(File.generated(config, "lessons/index.md", content=_lessons_index()))
    for lesson in lessons():
        if lesson["notebook"] is None:
            files.append(File.generated(config, f"lessons/{lesson['name']}.md", content=_placeholder(lesson)))
    files.append(File.generated(config, "api.md", content=_api_page()))
    if RESULTS.is_dir():
        for image in sorted(RESULTS.glob("*.png")):
            files.append(File.generated(config, f"benchmarks/{image.name}", abs_src_path=str(image)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- exercises-table -->" in markdown:
        markdown = markdown.replace("<!-- exercises-table -->", _exercises_table())
    if "<!-- benchmark-results -->" in markdown:
        markdown = markdown.replace("<!-- benchmark-results -->", _benchmarks_section())
    if "<!-- lessons-week-" in markdown or "<!-- exercises-week-" in markdown:
        markdown = _roadmap_cells(markdown)
    if page.file.src_uri in ("unsloth-map.md", "reading.md"):
        markdown = _link_lessons(markdown, page.file.src_uri == "reading.md")
    return markdown


def _link_lessons(markdown: str, by_source: bool) -> str:
    """Keep a link to lessons/<name>.ipynb only when that lesson is on the site; a lesson split into parts
    (<name>_cpu, <name>_gpu) links its first part. Otherwise show the name as text: the lesson's source file when
    `by_source`, else the link text marked "(not on the site yet)"."""
    executed = [lesson["name"] for lesson in lessons() if lesson["notebook"]]

    def relink(m):
        name = m[2] if m[2] in executed else next((n for n in executed if n.startswith(m[2] + "_")), None)
        if name is not None:
            return f"[{m[1]}](lessons/{name}.ipynb)"
        return f"{m[1]} (`lessons/{m[2]}.py`)" if by_source else f"`{m[1]}` (not on the site yet)"
    return re.sub(r"\[([^\]]+)\]\(lessons/(\w+)\.ipynb\)", relink, markdown)

"""The rendered course: the Unsloth map points at real files, the site builds with --strict from the executed lessons,
and a real browser (headless Debian Chromium) shows the home page and a lesson with its figures and outputs.

The lessons are executed once per test session (tests/helpers/lesson_runner.py); when tests/test_lessons.py has run in the
same session, the build reuses its executed notebooks. Screenshots go to build/screenshots/.
"""
import html
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from helpers.lesson_runner import EXECUTED, ROOT, execute_lesson, lesson_files, prefetch

SCREENSHOTS = ROOT / "build" / "screenshots"

# The learning plan's Unsloth files/functions -> (the minilora files that rebuild them, the lesson that teaches them).
UNSLOTH_MAP = {
    "unsloth-cli.py": (["minilora/commands/train.py"], "week1_big_picture"),
    "models/loader.py": (["minilora/loader.py"], "week2_model_family"),
    "models/llama.py": (["minilora/models/llama.py"], "week2_model_family"),
    "models/mistral.py": (["minilora/models/mistral.py"], "week2_model_family"),
    "LlamaAttention_fast_forward": (["minilora/models/llama.py", "minilora/models/mistral.py"], "week2_attention"),
    "models/qwen2.py": (["minilora/models/qwen2.py"], "week2_model_family"),
    "models/_utils.py": (["minilora/models/checkpointing.py", "minilora/ops.py"], "week5_checkpointing"),
    "kernels/utils.py": (["minilora/lora.py"], "week1_lora"),  # get_lora_parameters
    "kernels/utils.py matmul_lora": (["minilora/kernels/fast_lora.py"], "week5_triton_fast_lora"),
    "kernels/fast_lora.py": (["minilora/kernels/fast_lora.py"], "week5_triton_fast_lora"),
    "kernels/cross_entropy_loss.py": (["minilora/kernels/cross_entropy.py"], "week3_cross_entropy"),
    "kernels/rope_embedding.py": (["minilora/kernels/rope.py"], "week3_kernels_rope_swiglu"),
    "kernels/swiglu.py": (["minilora/kernels/swiglu.py"], "week3_kernels_rope_swiglu"),
    "registry/": (["minilora/models/registry.py"], "week2_model_family"),
    "__init__.py": ([], "week4_memory"),
    "save.py": (["minilora/save.py"], "week5_saving"),
    "load_in_8bit": (["minilora/linear8bit.py", "minilora/train/adamw8bit.py", "minilora/quant/dynamic8.py",
                      "minilora/quant/int8.py"], "week4_8bit"),
    "multi-gpu-training-with-unsloth": (["minilora/train/distributed.py", "minilora/linear4bit.py"],
                                        "week6_beyond_one_gpu"),
}


def _map_rows():
    rows = {}
    for line in (ROOT / "docs" / "unsloth-map.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or cells[0] in ("Unsloth", "---"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        key = names[0] if names[0] not in rows else " ".join(names[:2])  # a file with two rows: add the function
        rows[key] = {"files": re.findall(r"`(minilora/[\w/]+\.py)`", cells[2]),
                     "lessons": re.findall(r"\(lessons/(\w+)\.ipynb\)", cells[3])}
    return rows


def test_unsloth_map_covers_the_plan_and_links_existing_code_and_lessons():
    rows = _map_rows()
    problems = [f"the Unsloth map has no row for {key}" for key in UNSLOTH_MAP if key not in rows]
    for key, (files, lesson) in UNSLOTH_MAP.items():
        row = rows.get(key)
        if row is None:
            continue
        for f in files:
            if f not in row["files"]:
                problems.append(f"row {key}: should name {f}")
        if lesson not in row["lessons"]:
            problems.append(f"row {key}: should link the lesson {lesson}")
        if files and not row["files"]:
            problems.append(f"row {key}: names no minilora file")
        for f in row["files"]:
            if not (ROOT / f).is_file():
                problems.append(f"row {key}: {f} does not exist")
        for name in row["lessons"]:
            if not (ROOT / "lessons" / f"{name}.py").is_file():
                problems.append(f"row {key}: lesson lessons/{name}.py does not exist")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Execute every lesson (once per session), then `mkdocs build --strict` into a temporary folder."""
    failures = []
    prefetch(lesson_files())
    for path in lesson_files():
        try:
            execute_lesson(path)
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "the site needs every lesson executed, and these failed:\n\n" + "\n\n".join(failures)
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    problems = [ln for ln in log.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + ("\n".join(problems) or log[-4000:])
    return out


def test_site_builds_with_every_lesson_and_page(site):
    for page in ("index.html", "roadmap/index.html", "lessons/index.html", "exercises/index.html",
                 "journal/index.html", "unsloth-map/index.html", "benchmarks/index.html", "api/index.html"):
        assert (site / page).is_file(), f"the built site has no {page}"
    missing = [p.stem for p in lesson_files() if not (site / "lessons" / p.stem / "index.html").is_file()]
    assert not missing, f"lessons missing from the built site: {missing}"
    exercises = (site / "exercises" / "index.html").read_text(encoding="utf-8")
    assert "pytest -m ex1_1" in exercises, "the exercises table was not generated"
    journal = (site / "journal" / "index.html").read_text(encoding="utf-8")
    assert "Daily progress" in journal and "Connections to transformer concepts" in journal


def _png_outputs(notebook: pathlib.Path) -> int:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return sum("image/png" in out.get("data", {}) for c in nb["cells"] for out in c.get("outputs", []))


def _first_printed_line(notebook: pathlib.Path) -> str | None:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for line in "".join(out.get("text", "")).splitlines():
                    if len(line.strip()) >= 8 and "\x1b" not in line:
                        return line.strip()
    return None


def _chromium() -> str:
    for name in (os.environ.get("MINILORA_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium found for the real-browser check: install Debian's `chromium` "
                "(apt-get install -y chromium), or set MINILORA_CHROMIUM=/path/to/chrome")


def _browse(chromium: str, url: str, profile: pathlib.Path, screenshot: pathlib.Path) -> str:
    """Render url headless: save a screenshot, return the DOM after scripts ran (MathJax included: the virtual-time
    budget lets the page's scripts and the files they load finish before the DOM is dumped)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1600",
             "--virtual-time-budget=30000"]
    shot = subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"chromium made no screenshot of {url}:\n{shot.stderr[-2000:]}"
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<html" in dom.stdout, f"chromium could not render {url}:\n{dom.stderr[-2000:]}"
    return dom.stdout


def _text(dom: str) -> str:
    """The page's visible text (tags removed, entities decoded)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", dom))


def _markdown_math(notebook: pathlib.Path) -> tuple[int, int]:
    """(display formulas $$...$$, inline formulas $...$) in a notebook's markdown cells."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    text = "\n".join("".join(c.get("source", "")) for c in nb["cells"] if c.get("cell_type") == "markdown")
    display = re.findall(r"\$\$.+?\$\$", text, flags=re.S)
    for d in display:
        text = text.replace(d, " ")
    return len(display), len(re.findall(r"(?<![\\$])\$[^$\n]+?\$", text))


def _not_blank(png: pathlib.Path) -> bool:
    import matplotlib.image as mpimg
    pixels = mpimg.imread(png)
    return pixels.std() > 0.01


def test_browser_shows_home_page_and_a_lesson_with_figures_and_outputs(site, tmp_path):
    chromium = _chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with_figures = [p.stem for p in lesson_files() if _png_outputs(EXECUTED / f"{p.stem}.ipynb")]
    assert with_figures, "no executed lesson has a figure (image/png output) to check in the browser"
    lesson = with_figures[0]

    home_png = SCREENSHOTS / "home.png"
    home = _browse(chromium, (site / "index.html").as_uri(), tmp_path / "profile-home", home_png)
    home_text = _text(home)
    assert "make demo" in home_text and "make test" in home_text, "the home page lacks the two set-up commands"
    assert "Lessons" in home_text and "Unsloth map" in home_text, "the home page lacks the navigation"
    assert _not_blank(home_png), f"the screenshot of the home page is blank: {home_png}"

    lesson_png = SCREENSHOTS / f"{lesson}.png"
    dom = _browse(chromium, (site / "lessons" / lesson / "index.html").as_uri(), tmp_path / "profile-lesson",
                  lesson_png)
    assert _not_blank(lesson_png), f"the screenshot of lesson {lesson} is blank: {lesson_png}"
    expected = _png_outputs(EXECUTED / f"{lesson}.ipynb")
    shown = len(re.findall(r"<img[^>]+src=\"data:image/png;base64,", dom))
    assert shown >= expected, f"lesson {lesson}: the browser shows {shown} inline PNG figures, the notebook has {expected}"
    text = _text(dom)
    printed = _first_printed_line(EXECUTED / f"{lesson}.ipynb")
    assert printed is None or printed in text, f"lesson {lesson}: printed output {printed!r} is not on the page"
    assert "jp-OutputArea-output" in dom, f"lesson {lesson}: no cell outputs rendered"
    for marker in ("Traceback (most recent call last)", "Cell In[", "application/vnd.jupyter.error"):
        assert marker not in text and marker not in dom, f"lesson {lesson}: the page shows error output ({marker!r})"


def test_browser_typesets_a_lessons_math_offline(site, tmp_path):
    """MathJax comes from the site itself (docs/hooks_math.py), never a CDN, and turns every formula of a lesson
    into typeset math: no raw $$ is left on the page."""
    chromium = _chromium()
    pages = sorted(site.rglob("*.html"))
    cdn = [str(p.relative_to(site)) for p in pages if re.search(r"<script[^>]+src=\"https?://", p.read_text("utf-8"))]
    assert not cdn, f"pages loading a script from the network (the site must work offline): {cdn[:5]}"
    with_display = [p.stem for p in lesson_files() if _markdown_math(EXECUTED / f"{p.stem}.ipynb")[0]]
    assert with_display, "no lesson has display math ($$...$$) to check in the browser"
    lesson = with_display[0]
    display, inline = _markdown_math(EXECUTED / f"{lesson}.ipynb")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    dom = _browse(chromium, (site / "lessons" / lesson / "index.html").as_uri(), tmp_path / "profile-math",
                  SCREENSHOTS / f"{lesson}-math.png")
    assert "assets/mathjax/MathJax.js" in dom, f"lesson {lesson}: MathJax is not loaded from the site's assets"
    shown_display = len(re.findall(r'class="MathJax_Display"', dom))
    shown = len(re.findall(r'class="MathJax"', dom))
    assert shown_display >= display and shown >= display + inline, (
        f"lesson {lesson}: MathJax typeset {shown_display} display and {shown} formulas in all; its markdown holds "
        f"{display} display and {inline} inline formulas (screenshot: {SCREENSHOTS / (lesson + '-math.png')})")
    text = _text(dom)
    assert "$$" not in text, f"lesson {lesson}: raw $$ left on the page: the math was not typeset"
    assert "Math Processing Error" not in text, f"lesson {lesson}: MathJax reports a Math Processing Error"


def _hooks(monkeypatch, executed: pathlib.Path):
    """docs/hooks.py as mkdocs loads it (by path), with the executed lessons looked for in `executed`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("minilora_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    monkeypatch.setattr(hooks, "EXECUTED", executed)
    return hooks


def test_a_build_without_executed_lessons_says_what_to_run(monkeypatch, tmp_path, caplog):
    hooks = _hooks(monkeypatch, tmp_path)  # an empty folder: nothing executed
    with caplog.at_level("WARNING", logger="mkdocs.hooks.minilora"):
        config = hooks.on_config({"nav": [{"Lessons": "lessons/index.md"}]})
    assert "run `make site` (or `pytest tests/test_lessons.py`) first" in caplog.text
    entries = config["nav"][0]["Lessons"]
    assert len(entries) == 1 + len(lesson_files()), "every lesson keeps its place in the menu"
    placeholder = hooks._placeholder(hooks.lessons()[0])
    assert "has not been executed yet" in placeholder and "make site" in placeholder
    assert "not executed yet: run `make site`" in hooks._lessons_index()


def test_the_exercises_table_keeps_what_you_write_once_an_exercise_is_done(monkeypatch, tmp_path):
    from minilora.course import discover_exercises
    hooks = _hooks(monkeypatch, tmp_path)
    for e in discover_exercises(ROOT):
        solved = (ROOT / "exercises" / "solutions" / e.stub.name).read_text(encoding="utf-8")
        before, after = hooks._stub_info(e.stub), hooks._stub_info(e.stub, text=solved)
        assert before[0] and after == before, f"exercise {e.label}: 'You write' {before} becomes {after} once solved"

"""The Makefile's targets, run the way a user runs them: `make <target>` in a copy of the tracked files, with only
the installed environment.

The copy holds what `git ls-files` lists (as the working tree has it), nothing built or cached. Its `.venv` is a
thin environment of its own (see `thin_venv`): the installed packages of the Python running these tests, and
minilora imported from the copy the way an editable install does it — only the package, never the repository root,
so a command that needs the root on sys.path fails here as it fails for a user.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

import pytest
from helpers.lesson_runner import execute_lesson, lesson_files, prefetch

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAMP = ".minilora-installed"  # the Makefile's mark of a finished `make setup`

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".git").exists(),
                                reason="needs `make` and a git checkout (the copy is made from `git ls-files`)")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def copy_tree(target: pathlib.Path) -> pathlib.Path:
    """The tracked files, mtimes kept (make compares them); a copied file is never newer than the original."""
    for name in tracked_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return target


def thin_venv(where: pathlib.Path, checkout: pathlib.Path) -> pathlib.Path:
    """A venv whose site-packages sees the running environment's packages (a .pth line, without running that
    environment's own .pth hooks, so its editable minilora stays out) and links the copy's `minilora` package, the
    way an editable install exposes it. Console scripts are re-pointed at this venv's python, so the jupyter
    settings `make lab` writes land here, not in the real environment."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    site = pathlib.Path(purelib)
    (site / "installed-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "minilora").symlink_to(checkout / "minilora", target_is_directory=True)
    source_bin = pathlib.Path(sys.prefix) / "bin"
    for script in source_bin.iterdir():
        made = where / "bin" / script.name
        if made.exists() or not script.is_file():
            continue
        with script.open("rb") as f:
            first_line = f.readline()
        if first_line.startswith(b"#!") and b"python" in first_line:  # a console script: run by this venv
            rest = script.read_bytes()[len(first_line):]
            made.write_bytes(f"#!{python}\n".encode() + rest)
            made.chmod(0o755)
        else:
            made.symlink_to(script)  # a compiled tool such as ruff, or a shell script
    # Data files (nbconvert's templates, JupyterLab's extensions, jupyter's config) are linked, but the folder that
    # `make lab` writes its settings into is this venv's own.
    for top in ("share", "etc"):
        link_tree(pathlib.Path(sys.prefix) / top, where / top,
                  own={"jupyter", "jupyter/lab"}, empty={"jupyter/lab/settings"})
    (where / STAMP).touch()  # set up: newer than the copied pyproject.toml and Makefile
    return where


def link_tree(source: pathlib.Path, target: pathlib.Path, own: set[str], empty: set[str], at: str = "") -> None:
    """Symlink what ``source`` holds into ``target``, except the folders named in ``own`` (made here, their content
    linked the same way) and ``empty`` (made here, left empty), given relative to the first ``source``."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        rel = f"{at}{child.name}"
        if rel in empty:
            (target / child.name).mkdir(exist_ok=True)
        elif rel in own and child.is_dir():
            link_tree(child, target / child.name, own, empty, rel + "/")
        elif not (target / child.name).exists():
            (target / child.name).symlink_to(child)


@dataclass
class Checkout:
    tree: pathlib.Path
    venv: pathlib.Path


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Checkout:
    if not (pathlib.Path(sys.prefix) / "bin" / "ruff").exists():
        pytest.skip("the running environment is not a minilora .venv (no bin/ruff): run `make test`")
    tree = copy_tree(tmp_path_factory.mktemp("checkout"))
    return Checkout(tree, thin_venv(tmp_path_factory.mktemp("env") / "venv", tree))


def make(checkout: Checkout, *args: str, timeout: int = 600, path: str | None = None,
         **env: str) -> subprocess.CompletedProcess:
    """`make VENV=... args` in the copy, with the user's environment variables (none of this test session's); on a
    timeout the whole process group is stopped (make and what it ran)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MINILORA_", "PYTEST", "MAKE"))}
    environ.update(env)
    if path is not None:
        environ["PATH"] = path
    proc = subprocess.Popen(["make", f"VENV={checkout.venv}", *args], cwd=checkout.tree, env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"make {' '.join(args)} ran past {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_make_check_runs_ruff_and_the_layer_test(checkout):
    run = make(checkout, "check")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "All checks passed!" in run.stdout
    assert "test_architecture.py" in run.stdout and " passed" in run.stdout


def test_make_site_builds_from_the_executed_lessons(checkout):
    """`make site` executes only the lessons whose notebooks are missing or older than what they depend on, then
    builds the site with --strict. The lessons run once per test session (tests/test_lessons.py has usually run
    them already); their notebooks are copied in, so make finds them up to date and only builds."""
    prefetch(lesson_files())
    for lesson in lesson_files():
        execute_lesson(lesson)
    (checkout.tree / "docs" / "lessons").mkdir(exist_ok=True)
    for notebook in (ROOT / "docs" / "lessons").glob("*.ipynb"):
        shutil.copy2(notebook, checkout.tree / "docs" / "lessons" / notebook.name)
    run = make(checkout, "site", NO_MKDOCS_2_WARNING="1")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "test_lesson_executes" not in run.stdout, "make executed a lesson whose notebook was up to date"
    assert (checkout.tree / "site" / "index.html").is_file()
    assert {p.parent.name for p in (checkout.tree / "site" / "lessons").glob("*/index.html")} >= \
        {p.stem for p in lesson_files()}


def test_a_changed_lesson_alone_is_executed_again(checkout):
    """What `make site` would run after one lesson changed: that lesson's notebook, then the build (a dry run)."""
    lessons = lesson_files()
    (checkout.tree / "docs" / "lessons").mkdir(exist_ok=True)
    for lesson in lessons:  # executed now, newer than every source (a dry run only compares the times)
        (checkout.tree / "docs" / "lessons" / f"{lesson.stem}.ipynb").touch()
    changed = checkout.tree / "lessons" / lessons[0].name
    changed.touch()
    os.utime(changed, (changed.stat().st_mtime + 60,) * 2)
    run = make(checkout, "-n", "site")
    assert run.returncode == 0, run.stdout[-4000:]
    executed = [line for line in run.stdout.splitlines() if "test_lesson_executes[" in line]
    assert executed == [f'{checkout.venv}/bin/python -m pytest -q '
                        f'"tests/test_lessons.py::test_lesson_executes[{lessons[0].stem}]"'], run.stdout
    assert "mkdocs build --strict" in run.stdout


def test_make_docs_serves_with_the_same_build_step(checkout):
    """`make docs` runs the lessons that changed, then `mkdocs serve`: its build step is the one `make site` runs
    (shown by a dry run; serving itself is not started here)."""
    run = make(checkout, "-n", "docs")
    assert run.returncode == 0, run.stdout[-4000:]
    assert "notebooks" in run.stdout and "-m mkdocs serve" in run.stdout


def test_make_lab_writes_its_settings_into_the_venv(checkout):
    """`make lab` with `jupyter lab --version` for arguments writes the two settings and starts no server."""
    run = make(checkout, "lab", "LAB_ARGS=--version", timeout=300)
    assert run.returncode == 0, run.stdout[-4000:]
    venv = checkout.venv
    overrides = json.loads((venv / "share/jupyter/lab/settings/overrides.json").read_text())
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers == {"python": "Jupytext Notebook"}
    startup = venv / "ipython/profile_default/startup/00-minilora-root.py"
    probe = ("import os, runpy, sys; runpy.run_path(sys.argv[1]); print(os.getcwd())")
    for cwd, expected in ((checkout.tree / "lessons", checkout.tree), (checkout.tree / "docs", checkout.tree / "docs")):
        moved = subprocess.run([sys.executable, "-c", probe, str(startup)], cwd=cwd, capture_output=True, text=True)
        assert moved.returncode == 0, moved.stderr
        assert pathlib.Path(moved.stdout.strip()) == expected  # a kernel started in lessons/ works from the root


def test_make_test_says_first_when_chromium_is_missing(checkout, tmp_path):
    """No Chromium: `make test` stops at once with one line saying what to install, before any test runs."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "bash", "make", "env"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    run = make(checkout, "test", path=str(tools), timeout=60, MINILORA_CHROMIUM="")
    assert run.returncode != 0
    lines = [line for line in run.stdout.splitlines() if line.strip() and not line.startswith("make:")]
    assert len(lines) == 1 and "no Chromium found" in lines[0] and "apt-get install chromium" in lines[0], run.stdout


def test_make_demo_trains_with_a_tiny_step_count(checkout):
    """`make demo` is `minilora train` on the bundled SmolLM2; DEMO_ARGS makes it one short step."""
    from minilora.io import find_smollm2_gguf
    try:
        find_smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"the bundled model is installed by `make setup`: {e}")
    args = ("--max_steps 1 --eval_examples 1 --per_device_train_batch_size 1 --gradient_accumulation_steps 1 "
            "--no_progress --output_dir outputs/demo-test")
    run = make(checkout, "demo", f"DEMO_ARGS={args}", timeout=900)
    assert run.returncode == 0, run.stdout[-4000:]
    assert "trained 1 steps" in run.stdout, run.stdout[-2000:]
    assert (checkout.tree / "outputs" / "demo-test" / "train_log.csv").is_file()

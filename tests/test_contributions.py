"""The capstone's last task: a learner's contribution — a test in tests/contrib/ or a docs page in docs/contrib/ —
follows the rules CONTRIBUTING.md ("Your first contribution") gives, so the suite keeps checking it. The tests
themselves run with the suite (pytest collects tests/contrib/); a page's commands run in test_docs_commands.py."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = sorted((ROOT / "tests" / "contrib").glob("test_*.py"))
PAGES = sorted((ROOT / "docs" / "contrib").glob("*.md"))
REPO_PATH = re.compile(r"\b((?:minilora|lessons|tests|exercises|benchmarks|docs|journal)/[\w./-]+\.(?:py|md))\b")
LESSON = re.compile(r"\blessons/(week\d+_\w+)\.py\b")


def named_paths_missing(text: str) -> list[str]:
    return [p for p in REPO_PATH.findall(text) if not (ROOT / p).exists()]


def problems_of_test(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = ast.get_docstring(tree) or ""
    problems = []
    if not doc:
        problems.append("needs a module docstring stating the fact it pins down")
    if not LESSON.search(doc):
        problems.append("its docstring names no lesson (lessons/weekN_<topic>.py) the fact comes from")
    imports = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    if not any(name == "minilora" or name.startswith("minilora.") for name in imports):
        problems.append("imports nothing from minilora: a contribution tests the library")
    if not any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body):
        problems.append("defines no test_ function")
    problems += [f"names {p}, which does not exist" for p in named_paths_missing(doc)]
    return problems


def problems_of_page(path: pathlib.Path, nav: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    problems = []
    if not text.startswith("# "):
        problems.append("starts with a '# Title' line")
    if f"contrib/{path.name}" not in nav:
        problems.append(f"is not in mkdocs.yml's nav (add `contrib/{path.name}` under Contributions)")
    if not LESSON.search(text):
        problems.append("names no lesson (lessons/weekN_<topic>.py) it builds on")
    if "```console" not in text:
        problems.append("has no ```console block: back the claim with a command the suite runs")
    problems += [f"names {p}, which does not exist" for p in named_paths_missing(text)]
    return problems


def test_the_project_ships_an_example_of_each_kind():
    assert TESTS and PAGES, "tests/contrib/ and docs/contrib/ each hold at least the example contribution"


@pytest.mark.parametrize("path", TESTS, ids=[p.name for p in TESTS])
def test_a_contributed_test_follows_the_rules(path):
    problems = problems_of_test(path)
    assert not problems, f"tests/contrib/{path.name}: " + "; ".join(problems) + " (CONTRIBUTING.md)"


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_a_contributed_page_follows_the_rules(path):
    problems = problems_of_page(path, (ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert not problems, f"docs/contrib/{path.name}: " + "; ".join(problems) + " (CONTRIBUTING.md)"


def test_the_rules_catch_a_careless_contribution(tmp_path):
    careless_test = tmp_path / "test_careless.py"
    careless_test.write_text("import torch\n\ndef helper():\n    assert torch.ones(1).sum() == 1\n")
    assert len(problems_of_test(careless_test)) == 4  # no docstring, no lesson, no minilora, no test_ function
    careless_page = tmp_path / "careless.md"
    careless_page.write_text("Some notes on minilora/nowhere.py\n")
    assert len(problems_of_page(careless_page, nav="")) == 5

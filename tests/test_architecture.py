"""The layer picture of README's "Architecture" section, checked against the code's imports.

Every import inside minilora/ (module level or inside a function) must point to the same layer or a lower one, and
the modules must not import each other in a circle. Run it alone with ``pytest tests/test_architecture.py -v``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minilora"

# Lowest first. A module belongs to the first prefix that matches its dotted name.
LAYERS = [
    ("formats", ["minilora.dtypes", "minilora.quant"]),
    ("kernels", ["minilora.kernels"]),
    ("switch", ["minilora.ops"]),
    ("layers", ["minilora.linear4bit", "minilora.linear8bit", "minilora.lora"]),
    ("models", ["minilora.models"]),
    ("files and memory", ["minilora.io", "minilora.memory"]),
    ("facade and training", ["minilora.save", "minilora.loader", "minilora.train"]),
    ("commands", ["minilora.commands", "minilora.cli", "minilora.__main__", "minilora.course", "minilora.prose",
                  "minilora.show", "minilora"]),
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_architecture.py and to the "
                         "README's Architecture section")


def imports_of(path: pathlib.Path) -> set[str]:
    """Every minilora module that ``path`` imports (absolute or relative, at any depth of the file)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minilora"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "minilora":
                continue
            for alias in node.names:  # `from . import ops` imports the module minilora.ops
                sub = f"{target}.{alias.name}"
                found.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).exists()
                          or (ROOT / sub.replace(".", "/")).is_dir() else target)
    found.discard(name)
    return found


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those are not arrows the module chose."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    mine = layer_of(module)
    upward = [f"{target} ({LAYERS[layer_of(target)][0]})" for target in sorted(GRAPH[module])
              if target not in _parents(module) and layer_of(target) > mine]
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports upward: {', '.join(upward)}"


def test_no_import_circle():
    edges = {m: {t for t in targets if t in GRAPH and t not in _parents(m) and m not in _parents(t)}
             for m, targets in GRAPH.items()}
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_one_dense_weight():
    defs = [p for p in PACKAGE.rglob("*.py") if "def dense_weight(" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(ROOT).as_posix() for p in defs] == ["minilora/linear4bit.py"]


def test_nothing_loaded_by_path():
    offenders = [p.relative_to(ROOT).as_posix() for folder in ("minilora", "lessons", "docs", "benchmarks", "exercises")
                 for p in (ROOT / folder).rglob("*.py") if "spec_from_file_location" in p.read_text(encoding="utf-8")]
    assert not offenders, f"load modules by import, not by file path: {offenders}"

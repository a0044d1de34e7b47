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

# Lowest first. Every module is named by hand: a new file must be placed in a layer (and in README's picture) before
# this test passes, so nothing lands in a layer by accident. A package's __init__ is the package's own name.
LAYERS = [
    ("formats", ["minilora.dtypes", "minilora.finite", "minilora.quant", "minilora.quant.blockwise", "minilora.quant.dynamic8",
                 "minilora.quant.int8", "minilora.quant.nf4"]),
    ("kernels", ["minilora.kernels", "minilora.kernels._triton", "minilora.kernels.checks",
                 "minilora.kernels.cross_entropy", "minilora.kernels.fast_lora", "minilora.kernels.fused_linear_ce",
                 "minilora.kernels.nf4_dequant", "minilora.kernels.rmsnorm", "minilora.kernels.rope",
                 "minilora.kernels.segment_attention", "minilora.kernels.swiglu"]),
    ("switch", ["minilora.ops"]),
    ("layers", ["minilora.linear4bit", "minilora.linear8bit", "minilora.lora"]),
    ("models", ["minilora.models", "minilora.models.checkpointing", "minilora.models.claimed_sizes", "minilora.models.config",
                "minilora.models.family",
                "minilora.models.generate", "minilora.models.kv_cache", "minilora.models.llama",
                "minilora.models.mistral", "minilora.models.offload_store", "minilora.models.qwen2", "minilora.models.registry",
                "minilora.models.tiled",
                "minilora.models.rotary"]),
    ("files and memory", ["minilora.io", "minilora.io.adapters", "minilora.io.atomic", "minilora.io.bnb4bit",
                          "minilora.io.chat_template", "minilora.io.data_sources", "minilora.io.gguf", "minilora.io.gguf_check",
                          "minilora.io.records", "minilora.io.records_arrow", "minilora.io.safetensors_dir",
                          "minilora.io.tokenizer", "minilora.memory",
                          "minilora.memory.estimate", "minilora.memory.measure", "minilora.memory.plan"]),
    ("facade and training", ["minilora.loader", "minilora.save", "minilora.train", "minilora.train.adamw8bit",
                             "minilora.train.arguments", "minilora.train.checkpoints", "minilora.train.data",
                             "minilora.train.dates_task", "minilora.train.distributed", "minilora.train.example_cache",
                             "minilora.train.formats", "minilora.train.inference",
                             "minilora.train.packing", "minilora.train.runs", "minilora.train.schedules", "minilora.train.step_checks",
                             "minilora.train.trainer"]),
    ("run", ["minilora.finetune", "minilora.parity"]),
    ("commands", ["minilora", "minilora.__main__", "minilora.cli", "minilora.commands", "minilora.commands.arguments",
                  "minilora.commands.chat", "minilora.commands.exercises", "minilora.commands.journal",
                  "minilora.commands.train", "minilora.course", "minilora.prose", "minilora.show"]),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    if name not in LAYER_OF:
        raise AssertionError(f"{name} belongs to no layer: add it by hand to LAYERS in tests/test_architecture.py "
                             "and to the README's Architecture section")
    return LAYER_OF[name]


def package_modules(package: pathlib.Path) -> set[str]:
    return {module_name(p) for p in package.rglob("*.py")}


def _is_module(dotted: str) -> bool:
    path = ROOT / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` — its body runs only when the file is run as a script, as module __main__."""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__" and len(node.test.comparators) == 1
            and isinstance(node.test.comparators[0], ast.Constant) and node.test.comparators[0].value == "__main__")


def _dynamic_targets(tree: ast.AST, top: str, modules: set[str]) -> set[str]:
    """What ``importlib.import_module(...)`` and ``__import__(...)`` calls can import: a string names its module; an
    f-string with a fixed head (``f"minilora.commands.{name}"``) any module under that head; any other expression
    (a dict lookup, say) every string in the file that names a module."""
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if called not in ("import_module", "__import__"):
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
        elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            head = arg.values[0].value
            found |= {m for m in modules if m.startswith(head)}
        else:
            found |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules}
    return {m for m in found if m.split(".")[0] == top}


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    return imports_in(module_name(path), path.name == "__init__.py", path.read_text(encoding="utf-8"), modules)


def imports_in(name: str, is_package: bool, source: str, modules: set[str]) -> set[str]:
    """Every module of the same package tree that module ``name`` (source text ``source``) imports: absolute or
    relative import statements at any depth of the file, and what its ``importlib.import_module`` / ``__import__``
    calls can load."""
    top = name.split(".")[0]
    package = name if is_package else name.rsplit(".", 1)[0]
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if not _is_main_guard(n)]  # runs only as a script: no arrow of the graph
    found = _dynamic_targets(tree, top, modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == top}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != top:
                continue
            for alias in node.names:  # `from . import ops` imports the module minilora.ops
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    found.discard(name)
    return found


def import_graph(package: pathlib.Path) -> dict[str, set[str]]:
    modules = package_modules(package)
    return {module_name(p): imports_of(p, modules) for p in sorted(package.rglob("*.py"))}


GRAPH = import_graph(PACKAGE)


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


def circles_in(graph: dict[str, set[str]]) -> list[str]:
    edges = {m: {t for t in targets if t in graph and t not in _parents(m) and m not in _parents(t)}
             for m, targets in graph.items()}
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
    return circles


@pytest.mark.parametrize("package", ["minilora", "benchmarks"])
def test_no_import_circle(package):
    circles = circles_in(GRAPH if package == "minilora" else import_graph(ROOT / package))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_every_module_is_placed_by_hand():
    listed = [m for _, modules in LAYERS for m in modules]
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"listed in more than one place in LAYERS: {twice}"
    missing = sorted(set(GRAPH) - set(listed))
    assert not missing, (f"modules in no layer: {missing}; add each by hand to LAYERS in tests/test_architecture.py "
                         "and to README's Architecture section")
    gone = sorted(set(listed) - set(GRAPH))
    assert not gone, f"LAYERS lists modules that do not exist (any more): {gone}"


def test_dynamic_imports_are_followed():
    """`importlib.import_module` and `__import__` are imports too: a string, an f-string's fixed head, or (for any
    other argument) the module names written in the file."""
    assert {f"minilora.commands.{n}" for n in ("train", "chat", "journal", "exercises")} <= GRAPH["minilora.cli"]
    assert {"minilora.loader", "minilora.models.registry", "minilora.lora"} <= GRAPH["minilora"]
    source = ('import importlib\nm = importlib.import_module("minilora.train.trainer")\n'
              '__import__("minilora.cli")\nNAMES = {"x": "minilora.save"}\nimportlib.import_module(NAMES["x"])\n')
    found = imports_in("minilora.ops", False, source, set(GRAPH))
    assert {"minilora.train.trainer", "minilora.cli", "minilora.save"} <= found


def test_one_dense_weight():
    defs = [p for p in PACKAGE.rglob("*.py") if "def dense_weight(" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(ROOT).as_posix() for p in defs] == ["minilora/linear4bit.py"]


def test_nothing_loaded_by_path():
    offenders = [p.relative_to(ROOT).as_posix() for folder in ("minilora", "lessons", "docs", "benchmarks", "exercises")
                 for p in (ROOT / folder).rglob("*.py") if "spec_from_file_location" in p.read_text(encoding="utf-8")]
    assert not offenders, f"load modules by import, not by file path: {offenders}"


def test_the_ignore_index_is_written_once():
    """-100 (the label without loss) is named once, where the losses act on it; everything else imports the name."""
    homes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
                    and node.operand.value == 100):
                homes.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    # io/atomic.py's -100 is Linux's AT_FDCWD ("relative to the working directory"), another fact
    homes = [h for h in homes if not h.startswith("minilora/io/atomic.py:")]
    assert [h.split(":")[0] for h in homes] == ["minilora/kernels/__init__.py"], \
        f"-100 written as a literal: {homes}; import IGNORE_INDEX from minilora.kernels"

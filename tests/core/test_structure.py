"""The package's shape (DEVELOPING.md, issue #13): no import circles, the shared ``training/`` below both engines,
engines that read the typed config, and train loops made of short named phases. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "extension"
ENGINES = ("extension.image", "extension.text")
MAX_ENGINE_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ``extension`` that ``name`` imports, at the top or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from . import x`` imports the module x
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_training_is_below_both_engines():
    """``training/`` holds what both engines share; it imports neither engine (nor the runner above them)."""
    graph = _graph()
    upward = {(m, d) for m, deps in graph.items() if m.startswith("extension.training")
              for d in deps if d.startswith(ENGINES) or d == "extension.runner"}
    assert upward == set()
    assert not any(d.startswith("extension.text") for d in graph["extension.image.engine"])
    assert not any(d.startswith("extension.image") for d in graph["extension.text.engine"])


def test_setting_helper_is_gone():
    """Engines read ``TrainConfig`` attributes; defaults live only in the schema (no ``setting(cfg, k, default)``)."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "setting":
                offenders.append(f"{name}: def setting")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setting":
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_engine_functions_are_short():
    """Each engine's train loop is a sequence of named phases, none longer than a screen."""
    long = []
    for name in ("extension.image.engine", "extension.text.engine"):
        tree = ast.parse(_modules()[name].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_ENGINE_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_every_architecture_list_is_used():
    """A module-level ``*_ARCHES`` list is read somewhere else: no stale copy of a list kept elsewhere (the text
    architectures the trainer runs are ``text/families.SUPPORTED_ARCHES``, from its rows)."""
    import re

    repo = ROOT.parent
    sources = {p: p.read_text(encoding="utf-8") for folder in ("converters", "extension", "tests", "benchmarks")
               for p in (repo / folder).rglob("*.py")}
    unused = []
    for path, text in sources.items():
        if path.parts[len(repo.parts)] not in ("converters", "extension"):
            continue
        for node in ast.parse(text).body:
            for target in node.targets if isinstance(node, ast.Assign) else []:
                if isinstance(target, ast.Name) and target.id.endswith("_ARCHES"):
                    word = re.compile(rf"\b{target.id}\b")
                    if sum(len(word.findall(s)) for s in sources.values()) <= 1:
                        unused.append(f"{path.relative_to(repo)}: {target.id}")
    assert not unused, unused

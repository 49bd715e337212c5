"""The package's shape: imports point down (no circles), ``tera.tn`` stays generic, files stay small.

Every ``import`` in a module counts, at any depth (a function-level or ``TYPE_CHECKING``
import is still a dependency of the file), as DESIGN.md asks: a circle, even under
``TYPE_CHECKING``, means a job sits in the wrong file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tera"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``tera`` modules ``name`` imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> the tera modules it imports`` (package ``__init__`` files left out:
    a package re-exporting its modules is not a dependency of those modules)."""
    modules = _modules()
    known = set(modules)
    return {
        name: {t for t in _imports(name, path, known) if modules[t].name != "__init__.py"}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_tn_never_imports_adapters() -> None:
    graph = import_graph()
    leaks = {
        m: sorted(t for t in deps if not t.startswith("tera.tn") and t != "tera.errors")
        for m, deps in graph.items()
        if m.startswith("tera.tn")
    }
    assert {m: d for m, d in leaks.items() if d} == {}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_the_limit(name: str) -> None:
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by job (DESIGN.md)"


def test_quantized_never_sees_the_layer() -> None:
    assert "tera.adapters.layer" not in import_graph()["tera.adapters.quantized"]

"""The docs' ```python blocks (shown, not executed: they need GPUs, torchrun or model hubs)
are whole programs: each compiles and every name it uses is imported or defined in it, so a
reader can copy one and run it. Executed pages (``{code-cell}``) are checked by the docs build."""

import ast
import builtins
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            found.append((f"{page.name}#{i + 1}", block))
    return found


def _bound(tree: ast.AST) -> set[str]:
    """Every name the program binds anywhere (imports, assignments, defs, arguments, loops)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def undefined_names(source: str) -> list[str]:
    """Names a program reads but never binds (and that are not builtins), in order of use."""
    tree = ast.parse(source)
    bound = _bound(tree) | set(dir(builtins))
    seen: list[str] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id not in bound
            and node.id not in seen
        ):
            seen.append(node.id)
    return seen


def test_the_checker_finds_an_undefined_name():
    assert undefined_names("import torch\nfor batch in loader:\n    torch.sum(batch)\n") == [
        "loader"
    ]
    assert undefined_names("def f(x):\n    return [y for y in x]\nprint(f([1]))\n") == []


@pytest.mark.parametrize("where,source", _blocks(), ids=[w for w, _ in _blocks()])
def test_a_doc_snippet_defines_every_name_it_uses(where, source):
    missing = undefined_names(source)
    assert not missing, (
        f"docs/{where.replace('#', ' (python block ')}): uses {', '.join(missing)} without "
        "defining or importing it; make the block a whole program a reader can run"
    )

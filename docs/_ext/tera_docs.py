"""Sphinx helpers for the tera docs.

The ``test`` role names a pytest test, ``{test}`tests/test_theorems.py::test_name```, and
renders it as code, as pytest spells it. At build time it checks that the file defines that
test (a top-level ``def test_...`` or ``Class::test_...``), so a renamed or deleted test
fails the docs build (warnings are errors) instead of leaving the theory page pointing at
nothing.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.util import logging

REPO = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)


@functools.cache
def _tests_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(names)


def test_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: list[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """Render ``path::test`` as the test's name in code font; warn if it does not exist."""
    path_part, sep, test = text.partition("::")
    location = inliner.document.settings.env.docname, lineno
    path = REPO / path_part
    if not sep or not test:
        logger.warning("test role needs 'path::test_name', got %r", text, location=location)
    elif not path.is_file():
        logger.warning("test role: no file %s (from %r)", path_part, text, location=location)
    elif test not in _tests_in(path):
        logger.warning("test role: %s defines no test %r", path_part, test, location=location)
    node = nodes.literal(rawtext, text, classes=["tera-test"])
    return [node], []


def setup(app: Any) -> dict[str, Any]:
    """Register the ``test`` role."""
    app.add_role("test", test_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

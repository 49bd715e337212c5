"""Sphinx helpers for the tera docs.

Numbers: the ``num`` role, ``{num}`cpu.1024.2048.tera_split.xbase```, puts a measured value
on the page, read from the results files by :mod:`tera_numbers` (an unknown name fails the
build). Every page is also scanned for hand-written measurements (``2.07x``, ``58 ms``,
``1.1 MB``, ``61.3 %`` outside code, math and roles); one fails the build, so two pages
cannot give different figures for one measure. At the start of a build the Performance
charts and tables are generated from ``benchmarks/results/`` into ``docs/_generated/``, and
the build stops if ``docs/results/compare-default/`` (the landing page's result) is missing.

The ``test`` role names a pytest test, ``{test}`tests/test_theorems.py::test_name```, and
renders it as code, as pytest spells it. At build time it checks that the file defines that
test (a top-level ``def test_...`` or ``Class::test_...``), so a renamed or deleted test
fails the docs build (warnings are errors) instead of leaving the theory page pointing at
nothing.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Any

import tera_numbers
import tera_perf
from docutils import nodes
from sphinx.errors import ExtensionError
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


def num_role(
    name: str,
    rawtext: str,
    text: str,
    lineno: int,
    inliner: Any,
    options: dict[str, Any] | None = None,
    content: list[str] | None = None,
) -> tuple[list[nodes.Node], list[nodes.system_message]]:
    """Render the named number from the results files; warn (fail) on an unknown name."""
    location = inliner.document.settings.env.docname, lineno
    try:
        value = tera_numbers.value(text.strip())
    except (KeyError, FileNotFoundError, ValueError) as error:
        logger.warning("num role: %s", error, location=location)
        value = f"[{text}?]"
    return [nodes.inline(rawtext, value, classes=["tera-num"])], []


# -- Hand-written measurements -------------------------------------------------------------
_MEASURE = re.compile(
    r"(?<![\w.$/-])\d[\d,]*(?:\.\d+)?(?:x(?![\w])|\s?(?:ms|us|µs|MB|KB|kB|GB|MiB|GiB)\b|\s?%)"
)
_STRIP = [
    re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M),  # fenced code and directives' bodies
    re.compile(r"^%.*$", re.M),  # MyST comments
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"\{[\w:-]+\}`[^`]*`"),  # roles, {num} included
    re.compile(r"``[^`]*``|`[^`\n]*`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
]
_FENCE_KEEP = re.compile(r"^(:{3,}|`{3,})\{(note|warning|tip|admonition|seealso)\}", re.M)


def hand_written_measurements(text: str) -> list[str]:
    """The measurement-like literals of a page's prose (code, math and roles removed)."""
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    return _MEASURE.findall(text)


def _check_page(app: Any, docname: str, source: list[str]) -> None:
    if docname.startswith("api/"):
        return
    found = hand_written_measurements(source[0])
    if found:
        logger.warning(
            "hand-written measurement(s) %s: take them from the results files with "
            "{num}`name` (docs/_ext/tera_numbers.py lists the names; a figure measured "
            "elsewhere goes into its STATED table once)",
            ", ".join(repr(f) for f in found),
            location=docname,
        )


# -- Generated material and the landing page's result --------------------------------------
COMPARE_FILES = ("results.md", "results.json", "accuracy_vs_params.png", "ranks.png")


def _builder_inited(app: Any) -> None:
    missing = [f for f in COMPARE_FILES if not (tera_numbers.COMPARE / f).is_file()]
    if missing:
        raise ExtensionError(
            f"docs/results/compare-default/ lacks {', '.join(missing)}: the landing page and "
            "the adapter guide show the default comparison. Write it with\n"
            "  tera compare --preset default --out docs/results/compare-default\n"
            "(or, for a local stand-in that must not be committed, --preset smoke)."
        )
    tera_perf.generate(REPO / "docs" / "_generated")


def setup(app: Any) -> dict[str, Any]:
    """Register the ``test`` and ``num`` roles, the page check and the generated files."""
    app.add_role("test", test_role)
    app.add_role("num", num_role)
    app.connect("source-read", _check_page)
    app.connect("builder-inited", _builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

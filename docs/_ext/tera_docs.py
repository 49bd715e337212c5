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

Tables: in the HTML output, a name in a table cell may break after ``/`` and ``_``
(``multiemo/all_sentence_en``): a ``<wbr>`` is put there (prose text only, never inside
code or math), so that wide result tables fit the text column (``scripts/check_docs.py``
fails on a table wider than its column).

Short cross-references: a docstring inside a submodule may write ``:class:`AdapterLinear```
for the object documented as ``tera.adapters.AdapterLinear``, and a page may name a
re-export (``tera.adapters.BANK_CACHE``) of an object documented where it is defined
(``tera.adapters.batch.BANK_CACHE``). A Python reference that Sphinx cannot resolve as
written is resolved to the one documented ``tera`` object it names (type fitting the role;
a re-export only if both names give the same object); none or several stay unresolved, and
the build fails on them as before (``nitpicky``). The source pages' ``[docs]`` links get
the anchors they point at (:func:`_viewcode_anchors`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path
from typing import Any

import tera_numbers
import tera_perf
from docutils import nodes
from sphinx import addnodes
from sphinx.errors import ExtensionError
from sphinx.ext.viewcode import _get_full_modname
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.nodes import make_refnode

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


# -- Tables that fit the column -------------------------------------------------------------
_BREAK_AFTER = re.compile(r"(?<=\w[/_])(?=\w)")
_NO_BREAKS_IN = (nodes.literal, nodes.literal_block, nodes.math, nodes.raw, nodes.FixedTextElement)


class TableBreaks(SphinxPostTransform):
    """Put a ``<wbr>`` after ``/`` and ``_`` inside words of table cells (HTML only)."""

    default_priority = 900
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        """Split the text nodes of every table's cells at the break points."""
        for table in self.document.findall(nodes.table):
            for text in list(table.findall(nodes.Text)):
                parent = text.parent
                if parent is None or _inside(parent, _NO_BREAKS_IN, table):
                    continue
                parts = _BREAK_AFTER.split(str(text))
                if len(parts) == 1:
                    continue
                pieces: list[nodes.Node] = [nodes.Text(parts[0])]
                for part in parts[1:]:
                    pieces += [nodes.raw("", "<wbr>", format="html"), nodes.Text(part)]
                parent.replace(text, pieces)


def _inside(node: nodes.Node, kinds: tuple[type, ...], stop: nodes.Node) -> bool:
    while node is not None and node is not stop:
        if isinstance(node, kinds):
            return True
        node = node.parent
    return False


# -- Short cross-references ----------------------------------------------------------------
def _same_object(alias: str, documented: str) -> bool:
    """Whether two dotted names (module path, then attributes) give one Python object."""

    def get(dotted: str) -> Any:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
        raise ImportError(dotted)

    try:
        return get(alias) is get(documented)
    except (ImportError, AttributeError):
        return False


def _resolve_short_name(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a short or re-exported name to the one documented ``tera`` object (or None).

    ``AdapterLinear`` (written in a submodule's docstring) resolves to the one documented
    name ending in ``.AdapterLinear``; ``tera.adapters.BANK_CACHE`` (a re-export) to
    ``tera.adapters.batch.BANK_CACHE``, where it is defined and documented, if both
    names give the same object.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    if not target:
        return None
    domain = env.get_domain("py")
    types = set(domain.objtypes_for_role(node.get("reftype", "")) or ())
    if target.startswith("tera."):
        package, _, short = target.rpartition(".")
        found = [
            (name, obj)
            for name, obj in domain.objects.items()
            if name.startswith(package + ".")
            and name.endswith("." + short)
            and obj.objtype in types
            and _same_object(target, name)
        ]
    else:
        found = [
            (name, obj)
            for name, obj in domain.objects.items()
            if name.startswith("tera.") and name.endswith("." + target) and obj.objtype in types
        ]
    if len(found) != 1:
        return None
    name, obj = found[0]
    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, name)


# -- Source pages' back-links ----------------------------------------------------------------
def _viewcode_anchors(app: Any, doctree: nodes.document) -> None:
    """Give every documented object the anchor its source page's ``[docs]`` link uses.

    ``sphinx.ext.viewcode`` links every object of one source module to ``#<prefix>.<name>``
    with the module prefix of the first object it saw from that module. When a module's
    objects are documented under two prefixes (``tera.adapters.RowAdapters``, a re-export,
    and ``tera.adapters.batch.route``), the others' links would miss; this adds the id they
    use to their signature (after viewcode read the page).
    """
    modules = getattr(app.env, "_viewcode_modules", {})
    documented = app.env.get_domain("py").objects
    for signode in doctree.findall(addnodes.desc_signature):
        module, fullname = signode.get("module"), signode.get("fullname")
        if not module or not fullname:
            continue
        entry = modules.get(_get_full_modname(module, fullname))  # where viewcode put it
        if entry and fullname in entry[2] and entry[3] != module:
            alias = f"{entry[3]}.{fullname}"
            if alias not in signode["ids"] and alias not in documented:
                signode["ids"].append(alias)


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
    """Register the roles, the page check, the generated files, table breaks and short refs."""
    app.add_role("test", test_role)
    app.add_role("num", num_role)
    app.connect("source-read", _check_page)
    app.connect("builder-inited", _builder_inited)
    app.connect("missing-reference", _resolve_short_name)
    app.connect("doctree-read", _viewcode_anchors, priority=600)  # after viewcode's (500)
    app.add_post_transform(TableBreaks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

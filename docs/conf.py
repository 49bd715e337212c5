"""Sphinx configuration of the tera documentation site.

Build with ``make docs`` (warnings are errors). Everything the pages need is served from
the build folder: MathJax comes from the ``django-static-mathjax`` wheel (MathJax 3.2.2,
no CDN at build or view time), the tutorials run at build time through myst-nb.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import sphinx.ext.autosummary as autosummary_ext

import tera

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

# -- Project ----------------------------------------------------------------------------
project = "tera"
author = "tera developers"
copyright = "tera developers, Apache-2.0"
release = version = tera.__version__

# -- General ----------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "myst_nb",
    "tera_docs",  # docs/_ext/tera_docs.py: the {test} role that checks test names exist
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
exclude_patterns = ["_build", "_generated", "results", "**.ipynb_checkpoints", "README.md"]
html_static_path = ["_static"]
pygments_style = "sphinx"
pygments_dark_style = "monokai"
default_role = "code"
nitpicky = True  # every cross-reference to tera must resolve; outside names are plain text
nitpick_ignore_regex = [
    ("py:class", r"(numpy|np|npt|torch|collections\.abc|typing|opt_einsum)\..+"),
    ("py:class", r"tera\.tn\._backend\.Array"),  # the numpy-or-torch TypeVar
    ("py:class", r"tera\.adapters\.saving\.H"),  # the holder TypeVar of saving's helpers
    ("py:class", r"contextvars\..+"),  # the standard library's, as annotated
    ("py:class", r"sequence|optional|array"),  # prose types of numpy-style docstrings
    ("py:class", r"nn\..+|(pathlib\.)?Path"),  # torch.nn and pathlib names as annotated
    ("py:class", r"matplotlib\..+|callable|mapping|str to mapping"),
    ("py:class", r'\{?"\w+"\}?'),  # numpy-style value sets: kind : {"classifier", "causal_lm"}
    # AdapterTrainer's signature is transformers.Trainer's
    ("py:class", r"(transformers|datasets)\..+|Dataset|IterableDataset"),
]

# -- API reference: autodoc + napoleon (numpy-style docstrings) -------------------------
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = False  # the API pages list their members themselves
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes" as a field list: no duplicates with autodoc members
napoleon_use_rtype = False

# Autosummary's one-line summaries end at the first ". "; "the paper's Eq. (3)" is not the
# end of a sentence. (A module-level tuple of Sphinx's; if it goes away, summaries just get
# shorter.)
autosummary_ext.WELL_KNOWN_ABBREVIATIONS = (*autosummary_ext.WELL_KNOWN_ABBREVIATIONS, "Eq.")

# -- MyST / myst-nb ---------------------------------------------------------------------
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
nb_execution_mode = "cache"  # re-run a notebook only when its code changed
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_timeout = 600
nb_merge_streams = True
nb_ipywidgets_js: dict[str, Any] = {}  # no widget JavaScript from a CDN

# The kernels that run the pages start with three third-party messages quietened: importing
# a transformers model imports torchao when it is installed (to look for quantized weights),
# and torchao logs that its CUDA kernels do not load on a CPU build (with the local path),
# then torch logs a deprecation of torchao's enum registration; tqdm warns that ipywidgets
# is missing. None says anything about the page; tera's own warnings and everything else
# still show (scripts/check_docs.py fails on a cell output that shows a local site-packages
# path). IPython runs the startup files of $IPYTHONDIR's profile in every kernel, which
# inherits this environment.
KERNEL_QUIET = """\
import logging
import warnings

for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="IProgress not found")
"""
_IPYTHONDIR = DOCS / "_build" / "ipython"
(_IPYTHONDIR / "profile_default" / "startup").mkdir(parents=True, exist_ok=True)
(_IPYTHONDIR / "profile_default" / "startup" / "00-quiet-third-party.py").write_text(KERNEL_QUIET)
os.environ["IPYTHONDIR"] = str(_IPYTHONDIR)

# -- Math: MathJax 3 from a wheel, copied next to the pages -----------------------------
_mathjax_spec = importlib.util.find_spec("mathjax")
if _mathjax_spec is None or not _mathjax_spec.submodule_search_locations:
    raise RuntimeError(
        "MathJax is not installed: the docs bundle it from the django-static-mathjax wheel; "
        'install the docs extra with `pip install -e ".[docs]"` or run `make docs`'
    )
MATHJAX_ES5 = Path(next(iter(_mathjax_spec.submodule_search_locations))) / "static/mathjax/es5"
mathjax_path = "mathjax/tex-chtml.js"  # relative: served from _static/ of the build
mathjax3_config: dict[str, Any] = {
    "tex": {"macros": {"R": r"\mathbb{R}", "vecop": r"\operatorname{vec}"}},
}

# MathJax loads its fonts and lazy extensions relative to tex-chtml.js; copy only what the
# CommonHTML output can ask for (about 5 MB instead of the wheel's 35 MB).
_MATHJAX_FILES = ["tex-chtml.js", "input", "output/chtml", "ui", "a11y", "adaptors"]


def _copy_mathjax(app: Any, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for name in _MATHJAX_FILES:
        src, dst = MATHJAX_ES5 / name, target / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    shutil.copy2(MATHJAX_ES5.parent / "LICENSE", target / "LICENSE")


def _fresh_source_pages(app: Any) -> None:
    # viewcode rewrites a _modules/ page only when the module's file is newer than it, so an
    # incremental build keeps stale "[docs]" back-links after the API pages change.
    shutil.rmtree(Path(app.outdir) / "_modules", ignore_errors=True)


def setup(app: Any) -> None:
    """Regenerate the source pages every build; copy MathJax into the output at the end."""
    app.connect("builder-inited", _fresh_source_pages)
    app.connect("build-finished", _copy_mathjax)


# -- HTML -------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"tera {release}"
html_short_title = "tera"
html_css_files = ["tera.css"]
html_theme_options = {
    "source_edit_link": None,
    "navigation_with_keys": True,
    "top_of_page_buttons": [],
}
html_show_sourcelink = False
html_copy_source = False
html_last_updated_fmt = None

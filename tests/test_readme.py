"""The README's Python examples run and print what their comments say, its quickstart is the
code the docs build runs, and its result table is the default comparison's, not a copy that
can drift."""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART_PAGE = ROOT / "docs" / "quickstart.md"
_QUICKSTART = re.compile(r"<!-- quickstart: begin[^>]*-->\n(.*?)<!-- quickstart: end -->", re.S)


def _python_blocks(text=None):
    return re.findall(
        r"```python\n(.*?)```", README.read_text() if text is None else text, flags=re.S
    )


def _readme_quickstart():
    found = _QUICKSTART.findall(README.read_text())
    assert len(found) == 1, "the README should hold one quickstart block between its markers"
    return _python_blocks(found[0])


def test_readme_quickstart_is_the_code_the_docs_build_runs():
    # The docs build executes docs/quickstart.md (SmolLM2-135M: minutes on a CPU), so the
    # README's copy is compared with it here instead of being run a second time.
    page = QUICKSTART_PAGE.read_text()
    cells = re.findall(r"```\{code-cell\} ipython3\n(.*?)```", page, flags=re.S)
    assert cells, "docs/quickstart.md should have code cells"
    assert all(":tags:" not in cell for cell in cells), "hidden cells would not be in the README"
    assert _readme_quickstart() == cells, (
        "the README's quickstart differs from docs/quickstart.md's code cells: copy the "
        "cells into the README's quickstart block, in order"
    )


def test_readme_examples_print_what_they_claim():
    quickstart = _readme_quickstart()  # run by the docs build (see the test above)
    blocks = [block for block in _python_blocks() if block not in quickstart]
    assert blocks, "the README should show a Python example besides the quickstart"
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), {})
        claimed = [
            line.split("#")[-1].strip()
            for line in block.splitlines()
            if "print" in line.split("#")[0] and "#" in line
        ]
        assert out.getvalue().split("\n")[: len(claimed)] == claimed


def test_readme_results_block_matches_the_results_file():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_results.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text()
    assert "TeRA vs VeRA (r=256):" in readme  # the verdict lines are in the block
    assert "tera compare --preset default" in readme  # with the command that wrote them

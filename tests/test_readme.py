"""The README's Python examples run and print what their comments say, and its result table
is the default comparison's, not a copy that can drift."""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_print_what_they_claim():
    blocks = _python_blocks()
    assert blocks, "the README should show a Python example"
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

"""The README's Python examples run and print what their comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


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

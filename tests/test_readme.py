"""The README's result table is the default comparison's, not a copy that can drift."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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

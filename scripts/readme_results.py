"""Copy the default comparison's table and verdicts into the README (between its markers).

    python scripts/readme_results.py          # rewrite the README block
    python scripts/readme_results.py --check  # exit 1 if the README disagrees with the results

The block is what ``docs/results/compare-default/results.md`` says, so the README cannot give
other numbers than the docs (tests/test_readme.py runs ``--check``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "compare-default" / "results.md"
README = ROOT / "README.md"
BEGIN = "<!-- results: begin (scripts/readme_results.py writes this block) -->"
END = "<!-- results: end -->"


def block() -> str:
    """The README block: the table and the verdict lines of the default comparison."""
    lines = RESULTS.read_text().splitlines()
    kept = [
        line
        for line in lines
        if line.startswith(("|", "- ", "> **Warning", "**Verdicts**")) or not line.strip()
    ]
    text = "\n".join(kept).strip()
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return f"{BEGIN}\n{text}\n{END}"


def rewrite(readme: str) -> str:
    """``readme`` with its results block replaced by :func:`block`."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:start] + block() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README block, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    readme = README.read_text()
    wanted = rewrite(readme)
    if args.check:
        if wanted != readme:
            print("README.md's results block differs from " + str(RESULTS), file=sys.stderr)
            print("run: python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())

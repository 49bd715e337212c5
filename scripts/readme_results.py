"""Copy the comparisons' tables into the README (between their markers).

The default comparison, the ablations (TeRA against VeRA), the rank regime and the decoder
comparison (SmolLM2-135M), each from the results file its script wrote.

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
ABLATIONS = ROOT / "benchmarks" / "results" / "ablations"
ABL_BEGIN = "<!-- ablations: begin (scripts/readme_results.py writes this block) -->"
ABL_END = "<!-- ablations: end -->"
RANK = ROOT / "benchmarks" / "results" / "rank-regime" / "rank_regime.md"
RANK_BEGIN = "<!-- rank regime: begin (scripts/readme_results.py writes this block) -->"
RANK_END = "<!-- rank regime: end -->"
DECODER = ROOT / "docs" / "results" / "compare-paper-small" / "results.md"
DEC_BEGIN = "<!-- decoder: begin (scripts/readme_results.py writes this block) -->"
DEC_END = "<!-- decoder: end -->"


def _section(path: Path, title_start: str | None) -> str:
    """The first table of ``path`` (after the heading starting with ``title_start``)."""
    lines = path.read_text().splitlines()
    if title_start is not None:
        lines = lines[next(i for i, x in enumerate(lines) if x.startswith(title_start)) :]
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def ablation_block() -> str:
    """The README block: TeRA against VeRA per task, and at each budget."""
    parts = [_section(ABLATIONS / "ablations.md", "### TeRA against")]
    if (ABLATIONS / "budget.md").is_file():
        parts += ["", "At each budget (`benchmarks/results/ablations/budget.md`):", ""]
        parts.append(_section(ABLATIONS / "budget.md", None))
    return f"{ABL_BEGIN}\n" + "\n".join(parts) + f"\n{ABL_END}"


def rank_block() -> str:
    """The README block: the default TeRA against VeRA at each rank (TeRA minus VeRA)."""
    table = _section(RANK, "### The default TeRA against each VeRA")
    return f"{RANK_BEGIN}\n" + table + f"\n{RANK_END}"


def _results_block(path: Path, begin: str, end: str) -> str:
    """A comparison's table, verdicts, warnings and parameter flags from its results.md."""
    lines = path.read_text().splitlines()
    kept = [
        line
        for line in lines
        if line.startswith(("|", "- ", "> **Warning", "**Verdicts**", "**Not parameter"))
        or not line.strip()
    ]
    text = "\n".join(kept).strip()
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return f"{begin}\n{text}\n{end}"


def decoder_block() -> str:
    """The README block: the decoder comparison (SmolLM2-135M, paper-small)."""
    return _results_block(DECODER, DEC_BEGIN, DEC_END)


def block() -> str:
    """The README block: the table and the verdict lines of the default comparison."""
    return _results_block(RESULTS, BEGIN, END)


def rewrite(readme: str) -> str:
    """``readme`` with its results block replaced by :func:`block`."""
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    readme = readme[:start] + block() + readme[end:]
    for begin, stop, make in (
        (ABL_BEGIN, ABL_END, ablation_block),
        (RANK_BEGIN, RANK_END, rank_block),
        (DEC_BEGIN, DEC_END, decoder_block),
    ):
        if begin in readme:
            start, end = readme.index(begin), readme.index(stop) + len(stop)
            readme = readme[:start] + make() + readme[end:]
    return readme


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

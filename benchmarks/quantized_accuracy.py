"""Accuracy on a quantized base against the float32 base, from two ``tera compare`` runs.

    tera compare --methods tera,vera,lora --quantize 4bit --out benchmarks/results/compare-4bit
    python benchmarks/quantized_accuracy.py docs/results/compare-default \
        benchmarks/results/compare-4bit --out benchmarks/results/quantized_accuracy.md

Both runs use the default preset otherwise (same model, splits, seeds and budget); each
method's learning rate is chosen on validation in each run. The table gives, per method, the
test accuracy (mean ± 95% interval over seeds) on each base, the difference (quantized minus
float32, paired over seeds) and the bytes the base model's weights take.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tera.compare.report import difference_text, mean_interval, paired_accuracies, paired_test


def table(full: dict[str, Any], quantized: dict[str, Any]) -> str:
    """The Markdown table of :mod:`quantized_accuracy` (methods both runs made)."""
    mode = quantized["preset"].get("quantize") or "quantized"
    lines = [
        "<!-- written by benchmarks/quantized_accuracy.py from two results.json: do not edit -->",
        "",
        f"| Method | float32 base | {mode} base | Δ ({mode} - float32) [95% CI] | p | "
        "base weights float32 MiB | "
        f"{mode} MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, q in quantized["methods"].items():
        if key not in full["methods"] or not q.get("trains", True):
            continue
        f = full["methods"][key]
        cells = [q["label"]]
        for entry in (f, q):
            accs = [100 * a for t in entry["tasks"].values() for a in t["accuracy"]]
            m, h = mean_interval(accs)
            cells.append(f"{m:.2f} ± {h:.2f}")
        merged = {"methods": {"full": f, "q": q}}
        test = paired_test(paired_accuracies(merged, "full", against="q"))
        if test["low"] is None:
            cells += ["-", "-"]
        else:
            cells += [difference_text(test), f"{float(test['p'] or 0):.2g}"]
        for entry in (f, q):
            size = entry.get("base_weight_bytes")
            cells.append(f"{size / 2**20:.1f}" if size else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the table of two comparisons (float32 base first, quantized base second)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full", help="the comparison on the float32 base")
    parser.add_argument("quantized", help="the same comparison with --quantize")
    parser.add_argument("--out", default="benchmarks/results/quantized_accuracy.md")
    args = parser.parse_args(argv)
    full, quantized = (
        json.loads((Path(d) / "results.json").read_text()) for d in (args.full, args.quantized)
    )
    text = table(full, quantized)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

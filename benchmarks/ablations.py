"""What makes TeRA learn: the ablations of the TeRA-science question, run through the harness.

Every variant is a method spec of ``tera compare`` (tera.compare.methods), trained with the
default preset's budget on two tasks x 3 seeds, each at its own best learning rate on the
validation split (the harness's protocol: full-schedule trials, the grid extended at its
edge). The runs go to ``<out>/`` (resumable: run it again after an interruption, or with
more variants, and finished runs are kept); ``<out>/ablations.md`` groups the variants by
question, each against the default TeRA, paired over (task, seed).

    python benchmarks/ablations.py                       # all groups, ~hours on 2 cores
    python benchmarks/ablations.py --groups zero_init    # one group
    python benchmarks/ablations.py --steps 300 --groups budget --out .../ablations-300

The scale rule's variants are ``scale=`` multiples of the default ``1 / sqrt(384)`` (MiniLM's
q and v are 384 x 384).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tera.compare.methods import split_specs
from tera.compare.presets import PRESETS
from tera.compare.report import difference_text, mean_interval, paired_accuracies, paired_test
from tera.compare.run import compare

DEFAULT_SCALE = 1 / math.sqrt(384)

GROUPS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "zero_init": (
        "Which d starts at zero",
        [
            ("tera", "the smallest output mode (6), today's default"),
            ("tera(zero_init=0)", "the largest mode: the whole 384 input"),
            ("tera(zero_init=1)", "the first output mode (8)"),
        ],
    ),
    "scale": (
        "The scale of dW at d = 1",
        [
            (f"tera(scale={DEFAULT_SCALE / 4:.4g})", "1/4 of the default 1/sqrt(in)"),
            (f"tera(scale={DEFAULT_SCALE / 2:.4g})", "1/2 of the default"),
            ("tera", "exact rms 1/sqrt(in) = 0.051 (default)"),
            (f"tera(scale={DEFAULT_SCALE * 2:.4g})", "2x the default"),
            (f"tera(scale={DEFAULT_SCALE * 4:.4g})", "4x the default"),
            ("tera-paper-init", "the raw draw: Kaiming on each factor's fan-in, core as drawn"),
        ],
    ),
    "tensorization": (
        "Tensorization (parameters on the x axis of Figure 4)",
        [
            ("tera(out_mode=384)", "(384 | 384): N = 2"),
            ("tera(out_modes=(16,24))", "(384 | 16, 24)"),
            ("tera", "(384 | 8, 8, 6): input whole, output split (default)"),
            ("tera(out_modes=(4,4,4,6))", "(384 | 4, 4, 4, 6)"),
            ("tera(in_modes=(8,8,6))", "(8, 8, 6 | 8, 8, 6): both sides split"),
        ],
    ),
    "factors": (
        "Frozen factors: the paper's ablations",
        [
            ("tera", "random, shared by every layer of one shape (TeRA)"),
            ("tera-iden", "identity factors, only the core random (Figure 6)"),
            ("tera-unique", "random, drawn per layer (Table 8)"),
        ],
    ),
    "budget": (
        "The peers at the same budget",
        [("tera", "TeRA"), ("vera", "VeRA (r=256)"), ("lora", "LoRA (r=32)"), ("head", "head")],
    ),
}
TASKS = ("multiemo/all_sentence_en", "sports_understanding")


def _cell(results: dict[str, Any], key: str, task: str) -> str:
    accs = [100 * a for a in results["methods"][key]["tasks"].get(task, {}).get("accuracy", [])]
    if not accs:
        return "-"
    m, h = mean_interval(accs)
    return f"{m:.2f} ± {h:.2f}"


def ablation_tables(results: dict[str, Any], groups: list[str]) -> str:
    """Markdown: one table per group, each variant against the default TeRA."""
    tasks = list(results["tasks"])
    lines = [
        "<!-- written by benchmarks/ablations.py from results.json: do not edit -->",
        "",
        f"MiniLM-L6, {results['settings']['steps']} steps of batch "
        f"{results['settings']['batch_size']}, {results['preset']['seeds']} seeds, each cell at "
        "its own learning rate chosen on validation. Cells: test accuracy (%), mean ± 95% "
        "interval over seeds; Δ: the variant minus the default TeRA in points, paired over "
        "(task, seed), with the paired t-test's 95% interval and p.",
        "",
    ]
    for group in groups:
        title, variants = GROUPS[group]
        lines += [f"### {title}", ""]
        header = ["Variant", "What", "Params", *tasks, "Mean", "Δ vs TeRA [95% CI]", "p", "lr"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for key, what in variants:
            if key not in results["methods"]:
                continue
            e = results["methods"][key]
            means = [
                statistics.fmean([100 * a for a in t["accuracy"]])
                for t in e["tasks"].values()
                if t["accuracy"]
            ]
            what_cell = what.replace("|", "\\|")  # a table cell: "(384 | 384)" must not split it
            cells = [f"`{key}`", what_cell, f"{e.get('adapter_params', 0):,d}"]
            cells += [_cell(results, key, t) for t in tasks]
            cells.append(f"{statistics.fmean(means):.2f}" if means else "-")
            if key == "tera" or "tera" not in results["methods"]:
                cells += ["-", "-"]
            else:
                test = paired_test(paired_accuracies(results, "tera", against=key))
                if test["low"] is None:
                    cells += ["-", "-"]
                else:
                    cells += [difference_text(test), f"{float(test['p'] or 0):.2g}"]
            lrs = [f"{t['lr']:g}" for t in e["tasks"].values() if t.get("lr") is not None]
            cells.append(", ".join(lrs) or "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the ablation groups and write ``ablations.md`` next to the harness's reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default=",".join(GROUPS), help=", ".join(GROUPS))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--out", default="benchmarks/results/ablations")
    parser.add_argument(
        "--seed-from",
        metavar="DIR",
        help="a finished comparison of the same budget whose runs to reuse (its runs/)",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="rewrite ablations.md from <out>/results.json without running anything",
    )
    parser.add_argument(
        "--only", help="run only these variants of the groups (comma-separated specs)"
    )
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {', '.join(GROUPS)}")
    specs = list(dict.fromkeys(key for g in groups for key, _ in GROUPS[g][1]))
    if args.only:
        wanted = {"".join(v.split()) for v in split_specs(args.only)}
        specs = [s for s in specs if s in wanted]
    if "tera" not in specs:
        specs.insert(0, "tera")
    preset = PRESETS["default"]
    settings = preset.settings if args.steps is None else replace(preset.settings, steps=args.steps)
    preset = preset.with_overrides(
        methods=tuple(specs),
        tasks=tuple(t.strip() for t in args.tasks.split(",")),
        seeds=args.seeds,
        settings=settings,
    )
    out = Path(args.out)
    if args.tables_only:
        results = json.loads((out / "results.json").read_text())
        (out / "ablations.md").write_text(ablation_tables(results, groups))
        print((out / "ablations.md").read_text())
        return 0
    if args.seed_from and not (out / "compare.json").is_file():
        # runs of the same preset (e.g. the default comparison) are valid here: reuse them
        shutil.copytree(Path(args.seed_from) / "runs", out / "runs", dirs_exist_ok=True)
        shutil.copy(Path(args.seed_from) / "compare.json", out / "compare.json")
    results = compare(preset, out, resume=(out / "compare.json").is_file())
    (out / "ablations.md").write_text(ablation_tables(results, groups))
    print((out / "ablations.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

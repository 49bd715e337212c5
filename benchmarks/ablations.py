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


def _validation_cell(entry: dict[str, Any]) -> str:
    """Validation accuracy (%) at the chosen rate, seed 0, averaged over the tasks.

    What the defaults are chosen on: the learning-rate trials' validation split, never test.
    """
    vals = []
    for t in entry["tasks"].values():
        lr, search = t.get("lr"), t.get("lr_search") or {}
        found = next((v for k, v in search.items() if lr is not None and float(k) == lr), None)
        if found is not None:
            vals.append(100 * float(found))
    return f"{statistics.fmean(vals):.2f}" if vals else "-"


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
        "(task, seed), with the paired t-test's 95% interval and p. Val.: validation accuracy "
        "(%) of the seed-0 run at the chosen rate, averaged over the tasks (the split the "
        "defaults are chosen on; test decides nothing).",
        "",
    ]
    for group in groups:
        title, variants = GROUPS[group]
        lines += [f"### {title}", ""]
        header = [
            "Variant",
            "What",
            "Params",
            *tasks,
            "Mean",
            "Δ (variant - TeRA) [95% CI]",
            "p",
            "lr",
        ]
        header.insert(header.index("lr"), "Val. (seed 0)")
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
            cells.append(_validation_cell(e))
            lrs = [f"{t['lr']:g}" for t in e["tasks"].values() if t.get("lr") is not None]
            cells.append(", ".join(lrs) or "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _task_pairs(results: dict[str, Any], task: str, name: str, against: str) -> dict[str, Any]:
    """The paired test of ``against`` minus ``name`` on one task's seeds."""
    one = {
        "methods": {
            k: {"tasks": {task: results["methods"][k]["tasks"][task]}} for k in (name, against)
        }
    }
    return paired_test(paired_accuracies(one, against, against=name))


def peer_table(
    results: dict[str, Any],
    peer: str = "vera",
    refs: tuple[str, ...] = ("tera", "tera(zero_init=0)"),
) -> str:
    """Markdown: TeRA variants against ``peer`` on each task (Δ = variant minus peer)."""
    if peer not in results["methods"]:
        return ""
    label = results["methods"][peer]["label"]
    lines = [
        f"### TeRA against {label}, task by task",
        "",
        f"| Variant | Task | TeRA | {label} | Δ (TeRA - {label}) [95% CI] | p |",
        "|---|---|---|---|---|---|",
    ]
    for ref in refs:
        if ref not in results["methods"]:
            continue
        for task in results["tasks"]:
            if not all(task in results["methods"][k]["tasks"] for k in (ref, peer)):
                continue
            test = _task_pairs(results, task, ref, peer)
            diff = "-" if test["low"] is None else difference_text(test)
            p = "-" if test["p"] is None else f"{float(test['p']):.2g}"
            row = [f"`{ref}`", task, _cell(results, ref, task), _cell(results, peer, task)]
            lines.append("| " + " | ".join([*row, diff, p]) + " |")
    return "\n".join([*lines, ""])


def budget_report(folders: list[Path], methods: tuple[str, ...] = ("tera", "vera")) -> str:
    """Markdown: ``methods`` at each budget (one finished comparison folder per budget)."""
    runs = sorted(
        (json.loads((f / "results.json").read_text()) for f in folders),
        key=lambda r: r["settings"]["steps"],
    )
    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    labels = [runs[0]["methods"][m]["label"] for m in methods]
    header = ["Steps", "Task", *labels, f"Δ ({labels[0]} - {labels[1]}) [95% CI]", "p"]
    lines = [
        "<!-- written by benchmarks/ablations.py --budget from the folders' results.json -->",
        "",
        "Each budget is a full comparison of its own (the learning rate chosen on validation "
        "at that budget). Cells: test accuracy (%), mean ± 95% interval over seeds; Δ paired "
        "over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in runs:
        for task in tasks:
            if not all(task in r["methods"].get(m, {}).get("tasks", {}) for m in methods):
                continue
            test = _task_pairs(r, task, methods[0], methods[1])
            diff = "-" if test["low"] is None else difference_text(test)
            p = "-" if test["p"] is None else f"{float(test['p']):.2g}"
            cells = [str(r["settings"]["steps"]), task, *(_cell(r, m, task) for m in methods)]
            lines.append("| " + " | ".join([*cells, diff, p]) + " |")
    return "\n".join([*lines, ""])


def budget_plot(
    folders: list[Path], out: Path, methods: tuple[str, ...] = ("tera", "vera")
) -> None:
    """``accuracy_vs_steps.png``: test accuracy against training steps, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(
        (json.loads((f / "results.json").read_text()) for f in folders),
        key=lambda r: r["settings"]["steps"],
    )
    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for m in methods:
            xs, ys, lo, hi = [], [], [], []
            for r in runs:
                t = r["methods"].get(m, {}).get("tasks", {}).get(task)
                if not t or not t["accuracy"]:
                    continue
                accs = [100 * a for a in t["accuracy"]]
                xs.append(r["settings"]["steps"])
                ys.append(statistics.fmean(accs))
                lo.append(min(accs))
                hi.append(max(accs))
            if xs:
                label = runs[0]["methods"][m]["label"]
                ax.plot(xs, ys, marker="o", label=label)
                ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks([r["settings"]["steps"] for r in runs])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training steps (batch 16)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(task)
        ax.legend()
    fig.suptitle("Accuracy against budget (mean over seeds; band: min..max)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


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
    parser.add_argument(
        "--budget",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="finished comparisons at several budgets: write <out>/budget.md and "
        "<out>/accuracy_vs_steps.png from them (TeRA and VeRA) and stop",
    )
    args = parser.parse_args(argv)
    if args.budget:
        out = Path(args.out)
        (out / "budget.md").write_text(budget_report(args.budget))
        budget_plot(args.budget, out / "accuracy_vs_steps.png")
        print((out / "budget.md").read_text())
        return 0
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
        (out / "ablations.md").write_text(
            ablation_tables(results, groups) + "\n" + peer_table(results)
        )
        print((out / "ablations.md").read_text())
        return 0
    if args.seed_from and not (out / "compare.json").is_file():
        # runs of the same preset (e.g. the default comparison) are valid here: reuse them
        shutil.copytree(Path(args.seed_from) / "runs", out / "runs", dirs_exist_ok=True)
        shutil.copy(Path(args.seed_from) / "compare.json", out / "compare.json")
    results = compare(preset, out, resume=(out / "compare.json").is_file())
    (out / "ablations.md").write_text(ablation_tables(results, groups) + "\n" + peer_table(results))
    print((out / "ablations.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

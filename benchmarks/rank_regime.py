"""The rank regime: VeRA at r = J/16, J/4, 2J/3 against TeRA schemes of comparable parameters.

MiniLM-L6 (J = 384: q and v are 384 x 384), the default preset's budget, the ablation tasks,
3 seeds, every method at its own learning rate chosen on validation (the harness's protocol).
Runs go to ``<out>/`` (resumable). Runs identical to the ablations' (same preset, tasks,
splits and seeds: ``tera``, ``vera``, ``tera(out_mode=384)``, ``tera(in_modes=(8,8,6))``)
are read from ``--reuse`` (``benchmarks/results/ablations/results.json``) instead of redone.

    python benchmarks/rank_regime.py                # run what is missing, write the tables
    python benchmarks/rank_regime.py --tables-only  # rewrite rank_regime.md and the plot

``rank_regime.md``: one row per method (VeRA by rank, TeRA schemes by parameters) with the
rank of dW, r / J, accuracy per task and the paired difference to the default TeRA; then
the default TeRA against each VeRA task by task. ``accuracy_vs_params_rank.png``: accuracy
against trainable parameters, each point labelled with dW's rank.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tera.compare.presets import PRESETS
from tera.compare.run import compare

TASKS = ("multiemo/all_sentence_en", "fact_checker/fever")
#: Run here (the rest come from the ablations).
NEW = ("vera(r=match)", "vera(r=24)", "vera(r=96)")
#: Read from the ablations' results.json: the same preset, tasks, splits and seeds.
REUSED = ("tera", "tera(zero_init=0)", "vera", "tera(out_mode=384)", "tera(in_modes=(8,8,6))")
J = 384
#: (key, what) in the table's order: VeRA by rank, then TeRA schemes by parameters.
ROWS = (
    ("vera(r=match)", "VeRA, r sized to TeRA's count (J/17.5)"),
    ("vera(r=24)", "VeRA, r = J/16 (the paper's r/J on Llama-2-7B)"),
    ("vera(r=96)", "VeRA, r = J/4"),
    ("vera", "VeRA, r = 256 = 2J/3 (the default's peer)"),
    ("tera(in_modes=(8,8,6))", "TeRA (8, 8, 6 | 8, 8, 6): both sides split"),
    ("tera", "TeRA (384 | 8, 8, 6): the default"),
    ("tera(zero_init=0)", "TeRA (384 | 8, 8, 6), zero_init=0"),
    ("tera(out_modes=(16,24))", "TeRA (384 | 16, 24)"),
    ("tera(out_mode=384)", "TeRA (384 | 384)"),
)
_SETTINGS = (
    "model",
    "n_train",
    "n_validation",
    "n_test",
    "settings",
    "kind",
    "targets",
    "quantize",
)


def merged(here: dict[str, Any], reused: dict[str, Any]) -> dict[str, Any]:
    """One results dict: ``here``'s methods plus :data:`REUSED` from ``reused``.

    Raises if the two comparisons differ in anything a run depends on (model, split sizes,
    training settings): only then are their runs the same experiment.
    """
    differ = [k for k in _SETTINGS if here["preset"].get(k) != reused["preset"].get(k)]
    if differ:
        raise SystemExit(f"the reused comparison differs in {differ}: its runs are not these")
    out = json.loads(json.dumps(here))
    for key in REUSED:
        if key in reused["methods"] and key not in out["methods"]:
            entry = reused["methods"][key]
            entry["tasks"] = {t: v for t, v in entry["tasks"].items() if t in out["tasks"]}
            entry["source"] = "ablations"
            out["methods"][key] = entry
    return out


def _rank(entry: dict[str, Any]) -> str:
    ranks = sorted({r for t in entry["tasks"].values() for r in t.get("ranks", {}).values()})
    if not ranks:
        return "-"
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"


def _mean(entry: dict[str, Any]) -> float | None:
    accs = [100 * a for t in entry["tasks"].values() for a in t["accuracy"]]
    return statistics.fmean(accs) if accs else None


def rank_table(results: dict[str, Any]) -> str:
    """Markdown: the rank regime, one row per method, Δ = row minus the default TeRA."""
    from ablations import _cell, _validation_cell

    from tera.compare.report import difference_text, paired_accuracies, paired_test

    tasks = list(results["tasks"])
    ref = results["methods"]["tera"]["adapter_params"]
    lines = [
        "<!-- written by benchmarks/rank_regime.py: do not edit -->",
        "",
        f"MiniLM-L6 (J = {J}), {results['settings']['steps']} steps of batch "
        f"{results['settings']['batch_size']}, 3 seeds, each row at its own learning rate "
        "chosen on validation. Cells: test accuracy (%), mean ± 95% interval over seeds. "
        "rank(dW): the rank of each adapted layer's update after training (seed 0; a range "
        "when layers differ) and that rank over J. Δ (row - TeRA): the row minus the "
        "default TeRA in points, paired over (task, seed), with the paired t-test's 95% "
        "interval and p. Val.: "
        "validation accuracy of the seed-0 run at the chosen rate, mean over the tasks. "
        "Rows marked * come from benchmarks/results/ablations (the same runs).",
        "",
    ]
    header = ["Method", "What", "Params", "x TeRA", "rank(dW)", "rank/J", *tasks, "Mean"]
    header += ["Δ (row - TeRA) [95% CI]", "p", "Val.", "lr"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, what in ROWS:
        e = results["methods"].get(key)
        if e is None or not any(t["accuracy"] for t in e["tasks"].values()):
            continue
        rank = _rank(e)
        rj = "-" if rank == "-" else "-".join(f"{int(x) / J:.3g}" for x in rank.split("-"))
        mean = _mean(e)
        cells = [f"`{key}`" + ("*" if e.get("source") else ""), what.replace("|", "\\|")]
        cells += [f"{e['adapter_params']:,d}", f"{e['adapter_params'] / ref:.2f}", rank, rj]
        cells += [_cell(results, key, t) for t in tasks]
        cells.append(f"{mean:.2f}" if mean is not None else "-")
        test = paired_test(paired_accuracies(results, key, against="tera"))
        if key == "tera" or test["low"] is None:
            cells += ["-", "-"]
        else:  # paired_accuracies gives (TeRA, row): flip to row minus TeRA
            flipped = {"mean": -float(test["mean"] or 0), "low": -float(test["high"] or 0)}
            flipped["high"] = -float(test["low"] or 0)
            cells += [difference_text(flipped), f"{float(test['p'] or 0):.2g}"]
        cells.append(_validation_cell(e))
        cells.append(", ".join(f"{t['lr']:g}" for t in e["tasks"].values() if t.get("lr")))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def peer_pairs(results: dict[str, Any]) -> str:
    """Markdown: the default TeRA against each VeRA, task by task (Δ = TeRA minus VeRA)."""
    from ablations import _cell, _task_pairs

    from tera.compare.report import difference_text

    lines = [
        "| VeRA | r/J | Task | TeRA | VeRA | Δ (TeRA - VeRA) [95% CI] | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, _ in ROWS:
        e = results["methods"].get(key)
        if e is None or e["kind"] != "vera":
            continue
        for task in results["tasks"]:
            if not all(task in results["methods"][k]["tasks"] for k in ("tera", key)):
                continue
            test = _task_pairs(results, task, "tera", key)  # TeRA minus VeRA
            diff = "-" if test["low"] is None else difference_text(test)
            p = "-" if test["p"] is None else f"{float(test['p']):.2g}"
            rank = _rank(e)
            cells = [e["label"], f"{int(rank) / J:.3g}" if rank.isdigit() else "-", task]
            cells += [_cell(results, "tera", task), _cell(results, key, task), diff, p]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])


def _points(results: dict[str, Any], panel: str) -> list[tuple[str, int, float, float, int]]:
    """(key, params, mean, 95% half-width, rank of dW) of each row with runs on ``panel``."""
    from tera.compare.report import mean_interval

    pts = []
    for key, _ in ROWS:
        e = results["methods"].get(key)
        if e is None:
            continue
        if panel == "mean over tasks":
            accs = [
                statistics.fmean(100 * a for a in t["accuracy"])
                for t in e["tasks"].values()
                if t["accuracy"]
            ]
            if len(accs) < len(results["tasks"]):
                continue
            m, h = statistics.fmean(accs), 0.0
        else:
            t = e["tasks"].get(panel)
            if not t or not t["accuracy"]:
                continue
            m, h = mean_interval([100 * a for a in t["accuracy"]])
        ranks = [r for t in e["tasks"].values() for r in t.get("ranks", {}).values()]
        pts.append((key, e["adapter_params"], m, h, min(ranks) if ranks else J))
    return pts


def _stack_labels(ax: Any, labels: list[tuple[float, float, str]], x_text: float) -> None:
    """Write each ``(x, y, text)`` at ``x_text`` with a thin line to its point.

    The labels keep the order of their y and sit at least 6% of the y-range apart.
    """
    low, high = ax.get_ylim()
    gap = 0.06 * (high - low)
    placed: list[float] = []
    for x, y, text in sorted(labels, key=lambda item: item[1]):
        at = max(y, placed[-1] + gap) if placed else y
        placed.append(at)
        ax.annotate(
            text,
            (x, y),
            xytext=(x_text, at),
            textcoords="data",
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4", "shrinkB": 4},
        )


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against trainable parameters, one panel per task and one for the mean.

    Marker colour is the rank of dW over J (seed 0, the lowest layer); VeRA's points are
    labelled with r, the labels stacked right of the points with a leader line each, so no
    label covers another or a marker. Points at nearly the same count are spread a little
    sideways so none hides another (the x position is then approximate; the table has the
    counts).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    panels = [*results["tasks"], "mean over tasks"]
    norm = colors.Normalize(vmin=0.0, vmax=1.0)
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.4), squeeze=False)
    families = (
        ("VeRA (r = 22, 24, 96, 256)", "s", lambda k: k.startswith("vera")),
        ("TeRA schemes", "o", lambda k: k.startswith("tera") and "zero_init" not in k),
        ("TeRA zero_init=0", "^", lambda k: "zero_init" in k),
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        pts = sorted(_points(results, panel), key=lambda p: p[1])
        shown: list[float] = []
        labels: list[tuple[float, float, str]] = []  # (x, y, text) of VeRA's points
        for name, marker, wanted in families:
            mine = [p for p in pts if wanted(p[0])]
            if not mine:
                continue
            xs = []
            for _, params, *_ in mine:
                x = float(params)
                while any(abs(x / other - 1) < 0.04 for other in shown):
                    x *= 1.05  # nudge a point that would sit on another one
                shown.append(x)
                xs.append(x)
            ys = [p[2] for p in mine]
            if len(mine) > 1:
                ax.plot(xs, ys, color="0.6", lw=1, zorder=1)
            for x, (key, _, m, h, rank) in zip(xs, mine, strict=True):
                c = cmap(norm(rank / J))
                ax.errorbar(x, m, yerr=h, fmt="none", ecolor=c, capsize=3, zorder=2)
                ax.scatter(x, m, marker=marker, color=c, edgecolor="k", s=60, zorder=3)
                if key.startswith("vera"):
                    labels.append((x, m, f"r={rank}"))
            ax.scatter([], [], marker=marker, color="w", edgecolor="k", label=name)
        ax.axvline(results["methods"]["tera"]["adapter_params"], color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlim(right=max(shown) * 2.4)
        _stack_labels(ax, labels, x_text=max(shown) * 1.35)
        ax.set_xlabel("trainable adapter parameters (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(panel + ("" if panel.startswith("mean") else " (bars: 95% CI)"))
        ax.legend(fontsize=8, loc="lower right")
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), pad=0.01)
    bar.set_label(f"rank of dW / J (J = {J})")
    fig.suptitle(
        f"MiniLM-L6 (J = {J}): accuracy against trainable parameters, colour: rank of dW; "
        "dotted: TeRA's count",
        y=1.04,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(out: Path, reuse: Path) -> str:
    """Write the tables, the merged results and the plot into ``out``.

    ``rank_regime.md``, ``rank_regime.json`` and ``accuracy_vs_params_rank.png``.
    """
    results = merged(
        json.loads((out / "results.json").read_text()),
        json.loads((reuse / "results.json").read_text()),
    )
    text = (
        rank_table(results)
        + "\n### The default TeRA against each VeRA, task by task\n\n"
        + peer_pairs(results)
    )
    (out / "rank_regime.md").write_text(text)
    # the merged results, which the docs read their numbers from (docs/_ext/tera_numbers.py)
    (out / "rank_regime.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "accuracy_vs_params_rank.png")
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the rank-regime methods (what the ablations lack) and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rank-regime"))
    parser.add_argument("--reuse", type=Path, default=Path("benchmarks/results/ablations"))
    parser.add_argument("--methods", default=",".join(NEW))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    from tera.compare.methods import split_specs

    if not args.tables_only:
        preset = PRESETS["default"].with_overrides(
            methods=tuple(split_specs(args.methods)), tasks=TASKS, seeds=args.seeds
        )
        compare(preset, args.out, resume=(args.out / "compare.json").is_file())
    print(write(args.out, args.reuse))
    return 0


if __name__ == "__main__":
    sys.exit(main())

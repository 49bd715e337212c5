"""Reports of a comparison: ``results.json``, a Markdown table like the paper's Table 2, plots."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "summary_line", "wilcoxon_vs_tera", "write_reports"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _percent(entry: dict[str, Any]) -> float:
    adapter, base = entry.get("adapter_params", 0), entry.get("base_params", 0)
    return 100.0 * adapter / (base + adapter) if base + adapter else 0.0


def wilcoxon_vs_tera(results: dict[str, Any]) -> dict[str, float | None]:
    """Two-sided Wilcoxon signed-rank p-value of TeRA against each method.

    Pairs are (task, seed) accuracies. ``None`` when TeRA is absent, the pairs are fewer than
    two, or every difference is zero (the test is undefined).

    Examples
    --------
    >>> from tera.compare.report import wilcoxon_vs_tera
    >>> r = {"methods": {"tera": {"tasks": {"t": {"accuracy": [0.6, 0.7, 0.8]}}},
    ...                  "vera": {"tasks": {"t": {"accuracy": [0.5, 0.6, 0.6]}}}}}
    >>> round(wilcoxon_vs_tera(r)["vera"], 3)
    0.25
    """
    from scipy.stats import wilcoxon

    methods = results["methods"]
    if "tera" not in methods:
        return {}
    tera_tasks = methods["tera"]["tasks"]
    out: dict[str, float | None] = {}
    for name, entry in methods.items():
        if name == "tera":
            continue
        a, b = [], []
        for task, t in entry["tasks"].items():
            if task in tera_tasks:
                pairs = list(zip(tera_tasks[task]["accuracy"], t["accuracy"], strict=False))
                a += [x for x, _ in pairs]
                b += [y for _, y in pairs]
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        if len(diffs) < 2 or all(d == 0 for d in diffs):
            out[name] = None
            continue
        out[name] = float(wilcoxon(a, b, zero_method="zsplit").pvalue)
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table shaped like the paper's Table 2.

    Accuracies are in percent, mean ± std over seeds; "Params (%)" counts the adapter only
    (``100 * adapter / (base + adapter)``), the task head is listed apart.
    """
    tasks = list(results["tasks"])
    p_values = wilcoxon_vs_tera(results)
    header = [
        "Method",
        "Params (%)",
        "Head params",
        *tasks,
        "Average",
        "p (vs TeRA)",
        "Train s",
        "Peak MB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in results["methods"].items():
        cells = [entry["label"], f"{_percent(entry):.4f}", f"{entry.get('head_params', 0):,d}"]
        means = []
        for task in tasks:
            accs = entry["tasks"].get(task, {}).get("accuracy", [])
            if accs:
                m, s = _mean_std([100 * a for a in accs])
                means.append(m)
                cells.append(f"{m:.2f} ± {s:.2f}" if len(accs) > 1 else f"{m:.2f}")
            else:
                cells.append("-")
        cells.append(f"{statistics.fmean(means):.2f}" if means else "-")
        p = p_values.get(name)
        cells.append("-" if name == "tera" or p is None else f"{p:.3g}")
        secs = [s for t in entry["tasks"].values() for s in t["train_seconds"]]
        mem = [m for t in entry["tasks"].values() for m in t["peak_memory_mb"]]
        cells.append(f"{statistics.fmean(secs):.0f}" if secs else "-")
        cells.append(f"{max(mem):.0f}" if mem else "-")
        lines.append("| " + " | ".join(cells) + " |")
    majority = ", ".join(
        f"{t}: {100 * v['majority_accuracy']:.1f}" for t, v in results["tasks"].items()
    )
    lines.append("")
    lines.append(
        f"Majority-class accuracy (%): {majority}. Learning rates chosen on validation: "
        + "; ".join(
            f"{e['label']} " + ", ".join(f"{t['lr']:g}" for t in e["tasks"].values())
            for e in results["methods"].values()
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def summary_line(results: dict[str, Any]) -> str:
    """One line: the best method, TeRA's average and the time taken."""
    averages = {
        e["label"]: statistics.fmean(a for t in e["tasks"].values() for a in t["accuracy"])
        for e in results["methods"].values()
        if e["tasks"]
    }
    best = max(averages, key=averages.__getitem__)
    tera = next((e["label"] for n, e in results["methods"].items() if n == "tera"), None)
    parts = [f"best: {best} {100 * averages[best]:.2f}%"]
    if tera:
        parts.append(f"TeRA {100 * averages[tera]:.2f}%")
    parts.append(f"{results.get('total_seconds', 0):.0f} s")
    return "tera compare: " + ", ".join(parts)


def _layer_index(name: str) -> int:
    found = re.findall(r"\.(\d+)\.", f".{name}.")
    return int(found[0]) if found else 0


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # Figure 1: accuracy against trainable adapter parameters (log axis)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, e in results["methods"].items():
        accs = [100 * a for t in e["tasks"].values() for a in t["accuracy"]]
        if not accs:
            continue
        if e.get("adapter_params", 0) == 0:
            ax.axhline(statistics.fmean(accs), color="gray", ls="--", lw=1, label=e["label"])
            continue
        ax.scatter(
            e["adapter_params"],
            statistics.fmean(accs),
            s=60,
            zorder=3,
            label=e["label"],
            marker="*" if name == "tera" else "o",
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable adapter parameters (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs. trainable parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=120)
    plt.close(fig)
    written.append("accuracy_vs_params.png")
    # Figure 3: rank of dW per layer, q and v
    first_task = next(iter(results["tasks"]), None)
    if first_task is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
        for col, (ax, which) in enumerate(zip(axes, ("q", "v"), strict=True)):
            for e in results["methods"].values():
                ranks = e["tasks"].get(first_task, {}).get("ranks", {})
                pts = sorted(
                    (_layer_index(n), r)
                    for n, r in ranks.items()
                    if n.rsplit(".", 1)[-1]
                    in ({"query", "q_proj"} if which == "q" else {"value", "v_proj"})
                )
                if pts:
                    ax.plot([p for p, _ in pts], [r for _, r in pts], marker="o", label=e["label"])
            ax.set_xlabel("layer")
            ax.set_ylabel("rank of dW" if col == 0 else "")
            ax.set_title(f"{which} projection")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "ranks.png", dpi=120)
        plt.close(fig)
        written.append("ranks.png")
    # training loss curves (first seed, first task)
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in results["methods"].values():
        losses = e["tasks"].get(first_task, {}).get("losses", [[]])[0] if first_task else []
        if losses:
            window = max(1, len(losses) // 20)
            smooth = [
                statistics.fmean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))
            ]
            ax.plot(smooth, label=e["label"])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"Training loss, {first_task}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    written.append("loss_curves.png")
    return written


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_reports(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.md`` and the PNG plots into ``out``."""
    results["wilcoxon_vs_tera"] = wilcoxon_vs_tera(results)
    results["plots"] = _plots(results, out)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(results))

"""Reports of a comparison: ``results.json``, a Markdown table like the paper's Table 2, plots."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from tera.compare.plots import write_plots

__all__ = [
    "MIN_PAIRS",
    "markdown_table",
    "p_value_cell",
    "paired_accuracies",
    "summary_line",
    "wilcoxon_vs_tera",
    "write_reports",
]


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _percent(entry: dict[str, Any]) -> float:
    adapter, base = entry.get("adapter_params", 0), entry.get("base_params", 0)
    return 100.0 * adapter / (base + adapter) if base + adapter else 0.0


#: Fewest (task, seed) pairs a Wilcoxon p-value is reported for. Fewer pairs leave the
#: test next to nothing to say: with n pairs the smallest two-sided p it can reach is
#: 2 / 2**n (0.25 at 3 pairs; below 0.05 only from 6 pairs on).
MIN_PAIRS = 3


def paired_accuracies(
    results: dict[str, Any], name: str, against: str = "tera"
) -> list[tuple[float, float]]:
    """(``against``, ``name``) test accuracies of the runs both made, paired by (task, seed).

    A run is identified by its task and its seed (the seed fixes the data order and the
    initialization for every method alike), so a pair compares two methods under the same
    conditions. Runs only one of the two methods made are left out.

    Examples
    --------
    >>> from tera.compare.report import paired_accuracies
    >>> r = {"methods": {
    ...     "tera": {"tasks": {"t": {"seeds": [0, 1], "accuracy": [0.6, 0.7]}}},
    ...     "vera": {"tasks": {"t": {"seeds": [1, 2], "accuracy": [0.5, 0.4]}}}}}
    >>> paired_accuracies(r, "vera")
    [(0.7, 0.5)]
    """

    def runs(method: str) -> dict[tuple[str, int], float]:
        out = {}
        for task, t in results["methods"][method]["tasks"].items():
            seeds = t.get("seeds", range(len(t["accuracy"])))
            out.update({(task, seed): acc for seed, acc in zip(seeds, t["accuracy"], strict=True)})
        return out

    mine, theirs = runs(against), runs(name)
    return [(mine[key], theirs[key]) for key in sorted(mine) if key in theirs]


def wilcoxon_vs_tera(results: dict[str, Any]) -> dict[str, float | None]:
    """Two-sided Wilcoxon signed-rank p-value of TeRA against each method.

    Pairs are the (task, seed) runs both methods made (:func:`paired_accuracies`). ``None``
    when they are fewer than :data:`MIN_PAIRS` or every difference is zero (the test is
    undefined); :func:`p_value_cell` says which. Empty when TeRA did not run.

    Examples
    --------
    >>> from tera.compare.report import wilcoxon_vs_tera
    >>> r = {"methods": {"tera": {"tasks": {"t": {"accuracy": [0.6, 0.7, 0.8]}}},
    ...                  "vera": {"tasks": {"t": {"accuracy": [0.5, 0.6, 0.6]}}},
    ...                  "lora": {"tasks": {"t": {"accuracy": [0.9, 0.9]}}}}}
    >>> p = wilcoxon_vs_tera(r)
    >>> round(p["vera"], 3), p["lora"]
    (0.25, None)
    """
    from scipy.stats import wilcoxon

    if "tera" not in results["methods"]:
        return {}
    out: dict[str, float | None] = {}
    for name in results["methods"]:
        if name == "tera":
            continue
        pairs = paired_accuracies(results, name)
        if len(pairs) < MIN_PAIRS or all(a == b for a, b in pairs):
            out[name] = None
            continue
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        out[name] = float(wilcoxon(a, b, zero_method="zsplit").pvalue)
    return out


def p_value_cell(results: dict[str, Any], name: str) -> str:
    """The "p (vs TeRA)" cell of ``name``: the p-value, or why there is none.

    Examples
    --------
    >>> from tera.compare.report import p_value_cell
    >>> r = {"methods": {"tera": {"tasks": {"t": {"accuracy": [0.6]}}},
    ...                  "vera": {"tasks": {"t": {"accuracy": [0.5]}}}}}
    >>> p_value_cell(r, "vera")
    'n/a (needs >= 3 paired runs)'
    """
    if name == "tera" or "tera" not in results["methods"]:
        return "-"
    pairs = paired_accuracies(results, name)
    if len(pairs) < MIN_PAIRS:
        return f"n/a (needs >= {MIN_PAIRS} paired runs)"
    p = wilcoxon_vs_tera(results)[name]
    return "n/a (all pairs tied)" if p is None else f"{p:.3g}"


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison as a Markdown table shaped like the paper's Table 2.

    Accuracies are in percent, mean ± std over seeds; "Params (%)" counts the adapter only
    (``100 * adapter / (base + adapter)``), the task head is listed apart. "p (vs TeRA)" is
    the Wilcoxon signed-rank p-value over (task, seed) pairs (:func:`p_value_cell`), "Train
    MB" the memory training holds beyond the base model (see
    :func:`~tera.compare.train.train_run`).

    Examples
    --------
    >>> from tera.compare.report import markdown_table
    >>> entry = {"label": "TeRA", "adapter_params": 10, "head_params": 5, "base_params": 990,
    ...          "tasks": {"t": {"accuracy": [0.5, 0.6], "lr": 0.01, "train_seconds": [1, 1],
    ...                          "train_memory_mb": [2.0, 2.0]}}}
    >>> results = {"tasks": {"t": {"majority_accuracy": 0.5}}, "methods": {"tera": entry}}
    >>> print(markdown_table(results).splitlines()[2])
    | TeRA | 1.0000 | 5 | 55.00 ± 7.07 | 55.00 | - | 1 | 2.0 |
    """
    tasks = list(results["tasks"])
    header = [
        "Method",
        "Params (%)",
        "Head params",
        *tasks,
        "Average",
        "p (vs TeRA)",
        "Train s",
        "Train MB",
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
        cells.append(p_value_cell(results, name))
        trains = entry.get("trains", True)
        secs = [s for t in entry["tasks"].values() for s in t["train_seconds"]]
        mem = [m for t in entry["tasks"].values() for m in t.get("train_memory_mb", [])]
        cells.append(f"{statistics.fmean(secs):.0f}" if secs and trains else "-")
        cells.append(f"{max(mem):.1f}" if mem and trains else "-")
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
            if e.get("trains", True)
        )
        + "."
    )
    if any(not e.get("trains", True) for e in results["methods"].values()):
        lines.append("")
        lines.append(
            "Zero-shot: the pretrained causal LM as it is (no new head to train), each choice "
            "scored by its likelihood; no learning rate, no training, 0 trainable parameters."
        )
    lines.append("")
    lines.append(
        f"p (vs TeRA): two-sided Wilcoxon signed-rank test over the (task, seed) pairs both "
        f"methods ran, reported from {MIN_PAIRS} pairs on. Train MB: what training holds "
        "beyond the base model, measured in the first step: tensors saved for backward "
        "(activations), gradients, AdamW state and the adapter's own weights."
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_reports(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.md`` and the PNG plots into ``out``.

    The plots are written by :func:`~tera.compare.plots.write_plots`.
    """
    results["wilcoxon_vs_tera"] = wilcoxon_vs_tera(results)
    results["plots"] = write_plots(results, out)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(results))

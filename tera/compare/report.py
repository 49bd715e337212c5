"""Reports of a comparison: ``results.json``, a Markdown table like the paper's Table 2, plots."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from tera.compare.jsonfile import write_json
from tera.compare.matching import MATCH_TOLERANCE, is_matched, parameter_ratio_note
from tera.compare.plots import write_plots

__all__ = [
    "MIN_PAIRS",
    "difference_text",
    "markdown_table",
    "mean_interval",
    "not_learning",
    "p_value_cell",
    "paired_accuracies",
    "paired_test",
    "paired_tests",
    "parameter_ratios",
    "reference_method",
    "summary_line",
    "unmatched_note",
    "verdict_lines",
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


def reference_method(results: dict[str, Any]) -> str | None:
    """The method every other is tested against: ``tera`` when it ran, else the first one."""
    names = list(results["methods"])
    if not names:
        return None
    return "tera" if "tera" in names else names[0]


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its two-sided Student-t confidence interval (0 for one value).

    Examples
    --------
    >>> m, h = mean_interval([60.0, 62.0, 64.0])
    >>> m, round(h, 2)
    (62.0, 4.97)
    """
    from scipy.stats import t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def paired_test(pairs: list[tuple[float, float]]) -> dict[str, float | int | None]:
    """Paired t-test of ``a - b`` over ``pairs``: mean difference, 95% CI, p, n (in points).

    Differences are in percentage points. ``p`` and the interval are ``None`` with fewer
    than two pairs; with identical differences (zero spread) the interval is the point and
    ``p`` is 0 (a nonzero difference every time) or 1 (none). The Wilcoxon signed-rank p is
    given too: it assumes no normality but cannot go below ``2 / 2**n`` (0.25 at n = 3).

    Examples
    --------
    >>> r = paired_test([(0.60, 0.66), (0.62, 0.67), (0.61, 0.66)])
    >>> round(r["mean"], 2), r["n"], r["p"] < 0.01
    (-5.33, 3, True)
    """
    from scipy.stats import t, wilcoxon

    diffs = [100 * (a - b) for a, b in pairs]
    n = len(diffs)
    out: dict[str, float | int | None] = {
        "n": n, "mean": statistics.fmean(diffs) if diffs else None,
        "low": None, "high": None, "p": None, "wilcoxon_p": None,
    }  # fmt: skip
    if n < 2:
        return out
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        out.update(low=mean, high=mean, p=0.0 if mean else 1.0)
    else:
        sem = sd / math.sqrt(n)
        half = float(t.ppf(0.975, n - 1)) * sem
        out.update(low=mean - half, high=mean + half, p=float(2 * t.sf(abs(mean) / sem, n - 1)))
    if any(diffs):
        out["wilcoxon_p"] = float(wilcoxon(diffs, zero_method="zsplit").pvalue)
    return out


def difference_text(test: dict[str, float | int | None]) -> str:
    """A :func:`paired_test` with an interval as a table cell: ``"+1.23 [-0.40, +2.86]"``.

    Examples
    --------
    >>> difference_text({"mean": 1.234, "low": -0.4, "high": 2.86})
    '+1.23 [-0.40, +2.86]'
    """
    mean, low, high = (float(test[k] or 0) for k in ("mean", "low", "high"))
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def paired_tests(results: dict[str, Any]) -> dict[str, dict[str, float | int | None]]:
    """:func:`paired_test` of the reference method (:func:`reference_method`) against each other.

    Pairs are the (task, seed) runs both made (:func:`paired_accuracies`).
    """
    ref = reference_method(results)
    if ref is None:
        return {}
    return {
        name: paired_test(paired_accuracies(results, name, against=ref))
        for name in results["methods"]
        if name != ref
    }


def _cell_means(entry: dict[str, Any], task: str) -> list[float]:
    return [100 * a for a in entry["tasks"].get(task, {}).get("accuracy", [])]


def _floors(results: dict[str, Any], task: str) -> dict[str, float]:
    """What a method must beat on ``task``: the majority class and the zero-shot model."""
    floors = {"majority class": 100 * results["tasks"][task]["majority_accuracy"]}
    for e in results["methods"].values():
        if not e.get("trains", True) and task in e["tasks"]:
            floors["zero-shot"] = statistics.fmean(_cell_means(e, task))
    return floors


def not_learning(results: dict[str, Any]) -> dict[str, list[str]]:
    """Per task, the trained methods whose mean test accuracy does not beat the floor.

    The floor is the majority class, or the zero-shot model when it ran and scored higher.

    Examples
    --------
    >>> r = {"tasks": {"t": {"majority_accuracy": 0.5}}, "methods": {
    ...     "tera": {"trains": True, "tasks": {"t": {"accuracy": [0.5, 0.5]}}},
    ...     "lora": {"trains": True, "tasks": {"t": {"accuracy": [0.7, 0.8]}}}}}
    >>> not_learning(r)
    {'t': ['tera']}
    """
    out: dict[str, list[str]] = {}
    for task in results["tasks"]:
        floor = max(_floors(results, task).values())
        out[task] = [
            name
            for name, e in results["methods"].items()
            if e.get("trains", True)
            and _cell_means(e, task)
            and statistics.fmean(_cell_means(e, task)) <= floor + 1e-9
        ]
    return out


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per method: the reference against it, with the paired test's numbers.

    Examples
    --------
    >>> acc = lambda *a: {"t": {"seeds": [0, 1, 2], "accuracy": list(a)}}
    >>> r = {"tasks": {"t": {"majority_accuracy": 0.3}}, "methods": {
    ...     "tera": {"label": "TeRA", "adapter_params": 100, "tasks": acc(0.60, 0.62, 0.61)},
    ...     "vera": {"label": "VeRA", "adapter_params": 200, "tasks": acc(0.66, 0.67, 0.66)}}}
    >>> print(verdict_lines(r)[0])  # doctest: +ELLIPSIS
    TeRA vs VeRA: -5.3 points, 95% CI [-6.8, -3.9], p = 0.0039, n = 3: TeRA is worse (...)
    """
    ref = reference_method(results)
    if ref is None:
        return []
    mine = results["methods"][ref]
    lines = []
    for name, test in paired_tests(results).items():
        other = results["methods"][name]
        head = f"{mine['label']} vs {other['label']}"
        if not test["n"]:
            lines.append(f"{head}: no paired runs")
            continue
        if test["p"] is None:
            lines.append(f"{head}: {test['mean']:+.1f} points, n = 1: too few runs to test")
            continue
        p, low, high = float(test["p"]), float(test["low"] or 0), float(test["high"] or 0)
        if p < 0.05:
            word = f"{mine['label']} is {'better' if float(test['mean'] or 0) > 0 else 'worse'}"
        else:
            word = "no significant difference at the 5% level"
        line = (
            f"{head}: {float(test['mean'] or 0):+.1f} points, 95% CI [{low:+.1f}, {high:+.1f}], "
            f"p = {p:.2g}, n = {test['n']}: {word}"
        )
        a, b = mine.get("adapter_params", 0), other.get("adapter_params", 0)
        if a and b:
            line += f" ({other['label']}: {parameter_ratio_note(b / a, mine['label'])})"
        elif a and not b:
            line += f" ({other['label']} trains no adapter)"
        lines.append(line)
    return lines


def parameter_ratios(results: dict[str, Any]) -> dict[str, float]:
    """Each adapter method's adapter-parameter count over the reference's (TeRA's).

    Methods that train no adapter (head only, zero-shot) are left out, and so is
    everything when the reference trains none.

    Examples
    --------
    >>> r = {"methods": {"tera": {"adapter_params": 100}, "vera": {"adapter_params": 158},
    ...                  "head": {"adapter_params": 0}}}
    >>> parameter_ratios(r)
    {'tera': 1.0, 'vera': 1.58}
    """
    ref = reference_method(results)
    base = results["methods"][ref].get("adapter_params", 0) if ref else 0
    if not base:
        return {}
    return {
        name: e["adapter_params"] / base
        for name, e in results["methods"].items()
        if e.get("adapter_params")
    }


def unmatched_note(results: dict[str, Any]) -> str:
    """A sentence naming the methods not parameter-matched to the reference, or ``""``.

    Matched: within :data:`~tera.compare.matching.MATCH_TOLERANCE` of the reference's
    adapter-parameter count. A verdict against an unmatched method compares budgets as well
    as methods.

    Examples
    --------
    >>> r = {"methods": {"tera": {"label": "TeRA", "adapter_params": 100},
    ...                  "vera": {"label": "VeRA (r=256)", "adapter_params": 158}}}
    >>> print(unmatched_note(r))  # doctest: +ELLIPSIS
    **Not parameter-matched** (adapter parameters outside ±10% of TeRA's): VeRA (r=256) 1.58x...
    """
    ref = reference_method(results)
    far = [
        f"{results['methods'][n]['label']} {ratio:.3g}x"
        for n, ratio in parameter_ratios(results).items()
        if not is_matched(ratio)
    ]
    if not far or ref is None:
        return ""
    label = results["methods"][ref]["label"]
    return (
        f"**Not parameter-matched** (adapter parameters outside ±{MATCH_TOLERANCE:.0%} of "
        f"{label}'s): {', '.join(far)}. A verdict against these compares budgets as well as "
        "methods; `vera(r=match)`, `lora(r=match)`, `hira(r=match)` size a peer to "
        f"{label}'s count."
    )


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison as Markdown: warnings, a table like the paper's Table 2, verdicts.

    Accuracies are in percent, mean ± the half-width of the 95% Student-t interval over
    seeds; "Params (%)" counts the adapter only (``100 * adapter / (base + adapter)``), the
    task head is listed apart; "x TeRA params" is the row's adapter count over the
    reference's, marked "(unmatched)" outside ±10% (:func:`unmatched_note`). "Δ (TeRA - row)"
    is the reference's mean paired
    difference against the row's method with its 95% interval and the paired t-test's p
    (:func:`paired_test`); "Train MB" is the memory training holds beyond the base model
    (see :func:`~tera.compare.train.train_run`). A cell marked "≤ floor" did not beat the
    majority class (or the zero-shot model); when no method did, the report opens with a
    warning.

    Examples
    --------
    >>> from tera.compare.report import markdown_table
    >>> entry = {"label": "TeRA", "adapter_params": 10, "head_params": 5, "base_params": 990,
    ...          "tasks": {"t": {"accuracy": [0.5, 0.6], "lr": 0.01, "train_seconds": [1, 1],
    ...                          "train_memory_mb": [2.0, 2.0]}}}
    >>> results = {"tasks": {"t": {"majority_accuracy": 0.4}}, "methods": {"tera": entry}}
    >>> print(markdown_table(results).splitlines()[2])
    | TeRA | 1.0000 | 1.00x | 5 | 55.00 ± 63.53 | 55.00 | - | - | 1 | 2.0 |
    """
    tasks = list(results["tasks"])
    ref = reference_method(results)
    ref_label = results["methods"][ref]["label"] if ref else "-"
    tests = paired_tests(results)
    stuck = not_learning(results)
    lines: list[str] = []
    for task in tasks:
        trained = [n for n, e in results["methods"].items() if e.get("trains", True)]
        if trained and set(trained) <= set(stuck[task]):
            floors = ", ".join(f"{k} {v:.2f}" for k, v in _floors(results, task).items())
            lines += [
                f"> **Warning: no method learned {task}.** Every trained method's mean test "
                f"accuracy is at or below the floor ({floors}); this table measures nothing "
                "about the methods. Give it more steps or data, or another task.",
                "",
            ]
    ratios = parameter_ratios(results)
    # a causal LM trains no head: its column would be zeros only, and the table too wide
    heads = any(e.get("head_params", 0) for e in results["methods"].values())
    header = [
        "Method",
        "Params (%)",
        f"x {ref_label} params",
        *(["Head params"] if heads else []),
        *tasks,
        "Average",
        f"Δ ({ref_label} - row) [95% CI]",
        "p",
        "Train s",
        "Train MB",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in results["methods"].items():
        ratio = ratios.get(name)
        ratio_cell = "-" if ratio is None else f"{ratio:.2f}x"
        if ratio is not None and not is_matched(ratio):
            ratio_cell += " (unmatched)"
        cells = [
            entry["label"],
            f"{_percent(entry):.4f}",
            ratio_cell,
            *([f"{entry.get('head_params', 0):,d}"] if heads else []),
        ]
        means = []
        for task in tasks:
            accs = _cell_means(entry, task)
            if not accs:
                cells.append("-")
                continue
            m, h = mean_interval(accs)
            means.append(m)
            cell = f"{m:.2f} ± {h:.2f}" if len(accs) > 1 else f"{m:.2f}"
            if name in stuck.get(task, []):
                cell += " (≤ floor)"
            cells.append(cell)
        cells.append(f"{statistics.fmean(means):.2f}" if means else "-")
        test = tests.get(name)
        if test is None or test["mean"] is None:
            cells += ["-", "-"]
        elif test["low"] is None:
            cells += [f"{float(test['mean']):+.2f}", "n/a (1 pair)"]
        else:  # the reference minus the row's method, in points
            cells += [difference_text(test), f"{float(test['p'] or 0):.2g}"]
        trains = entry.get("trains", True)
        secs = [s for t in entry["tasks"].values() for s in t.get("train_seconds", [])]
        mem = [m for t in entry["tasks"].values() for m in t.get("train_memory_mb", [])]
        cells.append(f"{statistics.fmean(secs):.0f}" if secs and trains else "-")
        cells.append(f"{max(mem):.1f}" if mem and trains else "-")
        lines.append("| " + " | ".join(cells) + " |")
    verdicts = verdict_lines(results)
    if verdicts:
        lines += [
            "",
            f"**Verdicts** ({ref_label} against each method, paired over (task, seed)):",
            "",
        ]
        lines += [f"- {v}" for v in verdicts]
    note = unmatched_note(results)
    if note:
        lines += ["", note]
    lines.append("")
    floors = "; ".join(
        f"{t}: " + ", ".join(f"{k} {v:.2f}" for k, v in _floors(results, t).items()) for t in tasks
    )
    lines.append(f"Floors (test accuracy, %): {floors}.")
    base_bytes = [
        e.get("base_weight_bytes")
        for e in results["methods"].values()
        if e.get("base_weight_bytes")
    ]
    if base_bytes:
        quant = (results.get("preset") or {}).get("quantize")
        lines.append("")
        lines.append(
            f"Base model weights: {max(base_bytes) / 2**20:.1f} MiB as stored"
            + (f" ({quant} bitsandbytes layers)." if quant else " (float32).")
        )
    lines.append("")
    lines.append("Learning rates chosen on validation: " + _lr_notes(results) + ".")
    if any(not e.get("trains", True) for e in results["methods"].values()):
        lines.append("")
        lines.append(
            "Zero-shot: the pretrained causal LM as it is (no new head to train), each choice "
            "scored by its likelihood; no learning rate, no training, 0 trainable parameters."
        )
    lines.append("")
    lines.append(
        f"Accuracy cells: mean ± half-width of the 95% Student-t interval over seeds. "
        f"Δ and p: {ref_label} minus the row's method in points, paired over the (task, seed) "
        "runs both made, with the paired t-test's 95% interval and two-sided p (the Wilcoxon "
        "signed-rank p is in results.json). Train MB: what training holds beyond the base "
        "model, measured in the first step: tensors saved for backward (activations), "
        "gradients, AdamW state and the adapter's own weights."
    )
    return "\n".join(lines) + "\n"


def _lr_notes(results: dict[str, Any]) -> str:
    notes = []
    for e in results["methods"].values():
        if not e.get("trains", True):
            continue
        parts = []
        for t in e["tasks"].values():
            if t.get("lr") is None:
                continue
            text = f"{t['lr']:g}"
            if t.get("lr_extended") is not None:
                grid = ", ".join(sorted(t.get("lr_search", {}), key=float))
                still = ", which won: still on the edge" if t["lr"] == t["lr_extended"] else ""
                text += (
                    f" (best on the grid's edge: extended to {t['lr_extended']:g}{still}; "
                    f"tried {grid})"
                )
            parts.append(text)
        if parts:
            notes.append(f"{e['label']} " + ", ".join(parts))
    return "; ".join(notes) if notes else "none"


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


def write_reports(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json``, ``results.md`` and the PNG plots into ``out``.

    The plots are written by :func:`~tera.compare.plots.write_plots`.
    """
    results["wilcoxon_vs_tera"] = wilcoxon_vs_tera(results)
    results["reference"] = reference_method(results)
    results["paired_tests"] = paired_tests(results)
    results["verdicts"] = verdict_lines(results)
    results["parameter_ratios"] = parameter_ratios(results)
    results["not_learning"] = not_learning(results)
    results["plots"] = write_plots(results, out)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown_table(results))

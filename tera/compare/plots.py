"""Plots of a comparison: accuracy against parameters, rank of dW per layer, training loss."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["accuracy_plot", "loss_plot", "rank_plot", "write_plots"]


def _layer_index(name: str) -> int:
    found = re.findall(r"\.(\d+)\.", f".{name}.")
    return int(found[0]) if found else 0


_PANEL_TITLES = {"query": "q", "q_proj": "q", "value": "v", "v_proj": "v"}


def accuracy_plot(results: dict[str, Any]) -> Figure:
    """Mean test accuracy against trainable adapter parameters, log axis (the paper's Fig. 1).

    Methods without adapter parameters (head only, zero-shot) are drawn as dashed
    horizontal lines: the floor the adapters start from.

    Examples
    --------
    >>> from tera.compare.plots import accuracy_plot
    >>> t = lambda acc: {"t": {"accuracy": [acc]}}
    >>> r = {"methods": {
    ...     "tera": {"label": "TeRA", "adapter_params": 1000, "tasks": t(0.6)},
    ...     "head": {"label": "Head only", "adapter_params": 0, "tasks": t(0.4)}}}
    >>> fig = accuracy_plot(r)
    >>> fig.axes[0].get_xscale(), sorted(fig.axes[0].get_legend_handles_labels()[1])
    ('log', ['Head only', 'TeRA'])
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    return fig


def rank_plot(ranks: dict[str, dict[str, int]], title: str = "rank of dW") -> Figure:
    """Rank of dW per layer, one panel per kind of layer (q, v), one line per method.

    Parameters
    ----------
    ranks : dict
        ``{label: {layer name: rank}}``, e.g. from ``results["methods"][m]["tasks"][t]
        ["ranks"]`` or :meth:`AdapterLinear.delta_rank <tera.adapters.AdapterLinear>` of
        each layer. Layer names end in the projection (``...3.attention.self.query``); the
        number in the name is the layer index of the x axis.
    title : str
        Label of the y axis.

    Examples
    --------
    >>> from tera.compare.plots import rank_plot
    >>> fig = rank_plot({"TeRA": {"0.q_proj": 64, "1.q_proj": 64, "0.v_proj": 16},
    ...                  "LoRA": {"0.q_proj": 4, "1.q_proj": 4, "0.v_proj": 4}})
    >>> [ax.get_title() for ax in fig.axes]
    ['q projection', 'v projection']
    """
    panels: list[str] = []
    for layer_ranks in ranks.values():
        for name in layer_ranks:
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in panels:
                panels.append(leaf)
    fig = Figure(figsize=(5 * max(len(panels), 1), 4))
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for col, (ax, leaf) in enumerate(zip(axes, panels, strict=False)):
        for label, layer_ranks in ranks.items():
            pts = sorted(
                (_layer_index(n), r) for n, r in layer_ranks.items() if n.rsplit(".", 1)[-1] == leaf
            )
            if pts:
                ax.plot([p for p, _ in pts], [r for _, r in pts], marker="o", label=label)
        ax.set_xlabel("layer")
        ax.set_ylabel(title if col == 0 else "")
        ax.set_title(f"{_PANEL_TITLES.get(leaf, leaf)} projection")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_plot(results: dict[str, Any]) -> Figure:
    """Smoothed training loss of each method (first task, first seed).

    Examples
    --------
    >>> from tera.compare.plots import loss_plot
    >>> r = {"tasks": {"t": {}}, "methods": {"tera": {"label": "TeRA",
    ...      "tasks": {"t": {"losses": [[1.4, 1.2, 1.0]]}}}}}
    >>> loss_plot(r).axes[0].get_lines()[0].get_ydata().tolist()
    [1.4, 1.2, 1.0]
    """
    first_task = next(iter(results["tasks"]), None)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    if ax.get_lines():
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """Write the PNG plots of ``results`` into ``out``; returns their file names."""
    figures = {"accuracy_vs_params.png": accuracy_plot(results)}
    first_task = next(iter(results["tasks"]), None)
    if first_task is not None:
        figures["ranks.png"] = rank_plot(
            {
                e["label"]: e["tasks"].get(first_task, {}).get("ranks", {})
                for e in results["methods"].values()
                if e["tasks"].get(first_task, {}).get("ranks")
            }
        )
    figures["loss_curves.png"] = loss_plot(results)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=120)
    return list(figures)

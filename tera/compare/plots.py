"""Plots of a comparison: accuracy against parameters, rank of dW per layer, training loss.

Every figure keeps its legend outside the axes (below them), so no legend box hides data;
:func:`legend_overlaps` is the check the tests run on each plot.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["accuracy_plot", "legend_overlaps", "loss_plot", "rank_plot", "write_plots"]

# One marker and line style per method, in the order the methods come; TeRA keeps its star.
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">"]
_STYLES = ["-", "--", "-.", ":"]
_PANEL_TITLES = {"query": "q", "q_proj": "q", "value": "v", "v_proj": "v"}


def _layer_index(name: str) -> int:
    found = re.findall(r"\.(\d+)\.", f".{name}.")
    return int(found[0]) if found else 0


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend_below(fig: Figure, ax: Axes | None = None, ncols: int = 3) -> None:
    """One legend for the figure, outside (below) every axes."""
    source = fig.axes if ax is None else [ax]
    handles, labels = [], []
    for a in source:
        for h, lab in zip(*a.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(ncols, len(labels)),
            fontsize=8,
            frameon=False,
        )


def _count_label(value: float, _pos: object = None) -> str:
    """1000 -> "1k", 2.5e6 -> "2.5M": tick labels that stay short on a log axis."""
    if value <= 0:
        return ""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def accuracy_plot(results: dict[str, Any]) -> Figure:
    """Mean test accuracy against trainable adapter parameters, log axis (the paper's Fig. 1).

    Each adapter is one point (its mean over tasks and seeds) with a bar from its lowest to
    its highest run. Methods without adapter parameters (head only, zero-shot) are dashed
    horizontal lines: the floor the adapters start from. Methods with the same count (LoRA
    and HiRA at one r) are drawn a few percent apart on the x axis. The x ticks read
    ``1k``, ``10k``, ``100k``; the legend sits below the axes.

    Examples
    --------
    >>> from tera.compare.plots import accuracy_plot
    >>> t = lambda acc: {"t": {"accuracy": [acc]}}
    >>> r = {"methods": {
    ...     "tera": {"label": "TeRA", "adapter_params": 1000, "tasks": t(0.6)},
    ...     "head": {"label": "Head only", "adapter_params": 0, "tasks": t(0.4)}}}
    >>> fig = accuracy_plot(r)
    >>> fig.axes[0].get_xscale(), sorted(fig.axes[0].get_legend_handles_labels()[1])
    ('log', ['Head only (no adapter)', 'TeRA'])
    """
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    points: list[float] = []
    seen: dict[float, int] = {}  # methods with equal counts are spread a few percent apart
    for i, (name, e) in enumerate(results["methods"].items()):
        accs = [100 * a for t in e["tasks"].values() for a in t["accuracy"]]
        if not accs:
            continue
        mean = statistics.fmean(accs)
        if e.get("adapter_params", 0) == 0:
            ax.axhline(mean, color="0.45", ls="--", lw=1.2, label=f"{e['label']} (no adapter)")
            continue
        low, high = min(accs), max(accs)
        params = float(e["adapter_params"])
        repeat = seen.get(params, 0)
        seen[params] = repeat + 1
        ax.errorbar(
            params * 1.06**repeat,
            mean,
            yerr=[[max(mean - low, 0.0)], [max(high - mean, 0.0)]],
            fmt="*" if name == "tera" else _MARKERS[i % len(_MARKERS)],
            ms=13 if name == "tera" else 8,
            capsize=3,
            zorder=3,
            label=e["label"],
        )
        points.append(float(e["adapter_params"]))
    ax.set_xscale("log")
    if points:
        lo, hi = min(points), max(points)
        decades = math.floor(math.log10(lo)) - 0.3, math.ceil(math.log10(hi)) + 0.3
        ax.set_xlim(10 ** decades[0], 10 ** decades[1])
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_xlabel("trainable adapter parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs. trainable parameters (bars: seed range)", fontsize=11)
    _legend_below(fig, ax)
    return fig


def rank_plot(ranks: dict[str, dict[str, int]], title: str = r"rank of $\Delta W$") -> Figure:
    """Rank of dW per layer, one panel per kind of layer (q, v), one line per method.

    Methods whose ranks coincide (HiRA and TeRA are both full rank) stay distinguishable:
    each has its own hollow marker and line style and is shifted sideways by a small offset
    (at most 0.3 of a layer), so coinciding points sit side by side. The legend sits below
    the panels.

    Parameters
    ----------
    ranks : dict
        ``{label: {layer name: rank}}``, e.g. from ``results["methods"][m]["tasks"][t]
        ["ranks"]`` or :meth:`AdapterLinear.delta_rank <tera.adapters.AdapterLinear>` of
        each layer. Layer names end in the projection (``...3.attention.self.query``); the
        number in the name is the layer index of the x axis.
    title : str
        Label of the y axis (mathtext allowed).

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
    n_panels = max(len(panels), 1)
    fig = _figure(4.6 * n_panels, 4.2)
    axes = fig.subplots(1, n_panels, squeeze=False, sharey=True)[0]
    labels = [label for label, layer_ranks in ranks.items() if layer_ranks]
    width = 0.6  # total sideways spread, in layers
    offsets = {
        label: (i - (len(labels) - 1) / 2) * (width / max(len(labels) - 1, 1))
        for i, label in enumerate(labels)
    }
    top = max((r for lr in ranks.values() for r in lr.values()), default=1)
    for col, (ax, leaf) in enumerate(zip(axes, panels, strict=False)):
        for i, label in enumerate(labels):
            pts = sorted(
                (_layer_index(n), r)
                for n, r in ranks[label].items()
                if n.rsplit(".", 1)[-1] == leaf
            )
            if pts:
                ax.plot(
                    [p + offsets[label] for p, _ in pts],
                    [r for _, r in pts],
                    marker="*" if label.startswith("TeRA") else _MARKERS[i % len(_MARKERS)],
                    ms=11 if label.startswith("TeRA") else 7,
                    mfc="none",
                    mew=1.4,
                    ls=_STYLES[i % len(_STYLES)],
                    lw=1.2,
                    label=label,
                )
        ax.set_ylim(0, top * 1.08)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("layer (methods shifted sideways)")
        ax.set_ylabel(title if col == 0 else "")
        ax.set_title(f"{_PANEL_TITLES.get(leaf, leaf)} projection")
    _legend_below(fig, ncols=4)
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
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    for i, e in enumerate(results["methods"].values()):
        losses = e["tasks"].get(first_task, {}).get("losses", [[]])[0] if first_task else []
        if losses:
            window = max(1, len(losses) // 20)
            smooth = [
                statistics.fmean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))
            ]
            ax.plot(smooth, ls=_STYLES[i % len(_STYLES)], lw=1.4, label=e["label"])
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving mean)")
    ax.set_title(f"Training loss, {first_task} (first seed)", fontsize=11)
    _legend_below(fig, ax)
    return fig


def legend_overlaps(fig: Figure) -> list[str]:
    """Which legends of ``fig`` overlap an axes' data region (empty when none does).

    Draws the figure (Agg) and compares each legend's window extent with each axes'
    window extent (the data region inside the spines).

    Examples
    --------
    >>> from tera.compare.plots import rank_plot, legend_overlaps
    >>> legend_overlaps(rank_plot({"TeRA": {"0.q": 8}, "LoRA": {"0.q": 2}}))
    []
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    legends = list(fig.legends)
    legends += [legend for ax in fig.axes if (legend := ax.get_legend()) is not None]
    found = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            if box.overlaps(ax.get_window_extent(renderer)):
                found.append(f"legend over the axes {ax.get_title()!r}")
    return found


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

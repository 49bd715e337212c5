"""The harness's plots are readable: legends outside the data, distinguishable rank lines,
short log-axis tick labels, mathtext labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from tera.compare.plots import (
    accuracy_plot,
    legend_overlaps,
    loss_plot,
    rank_plot,
    write_plots,
)


def _results(n_layers: int = 6) -> dict:
    """A results.json-shaped dict: five adapters and head-only, HiRA and TeRA both full rank."""

    def ranks(q: int, v: int) -> dict[str, int]:
        out = {}
        for i in range(n_layers):
            out[f"encoder.layer.{i}.attention.self.query"] = q
            out[f"encoder.layer.{i}.attention.self.value"] = v if i != 3 else v - 8
        return out

    def task(accs: list[float], q: int, v: int) -> dict:
        losses = [[1.6 - 0.004 * s + 0.05 * (s % 7) / 7 for s in range(150)] for _ in accs]
        return {"accuracy": accs, "losses": losses, "ranks": ranks(q, v) if q else {}}

    methods = {
        "tera": ("TeRA", 10_368, [0.61, 0.59, 0.62], 384, 384),
        "vera": ("VeRA (r=256)", 19_968, [0.67, 0.66, 0.66], 256, 256),
        "hira32": ("HiRA (r=32)", 294_912, [0.65, 0.64, 0.66], 384, 384),
        "hira1": ("HiRA (r=1)", 9_216, [0.55, 0.57, 0.56], 384, 384),
        "lora": ("LoRA (r=8)", 73_728, [0.67, 0.68, 0.67], 8, 8),
        "head": ("Head only", 0, [0.42, 0.41, 0.43], 0, 0),
    }
    return {
        "tasks": {"multiemo": {}},
        "methods": {
            key: {
                "label": label,
                "adapter_params": params,
                "trains": key != "head",
                "tasks": {"multiemo": task(accs, q, v)},
            }
            for key, (label, params, accs, q, v) in methods.items()
        },
    }


def _rank_figure() -> Figure:
    r = _results()
    return rank_plot(
        {
            e["label"]: e["tasks"]["multiemo"]["ranks"]
            for e in r["methods"].values()
            if e["tasks"]["multiemo"]["ranks"]
        }
    )


PLOTS = {
    "accuracy": lambda: accuracy_plot(_results()),
    "ranks": _rank_figure,
    "loss": lambda: loss_plot(_results()),
}


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_no_legend_box_overlaps_the_data_region(name: str) -> None:
    fig = PLOTS[name]()
    assert fig.legends, "the legend is a figure legend, outside the axes"
    assert not any(ax.get_legend() for ax in fig.axes), "no legend inside an axes"
    assert legend_overlaps(fig) == []


def test_the_check_catches_a_legend_inside_the_axes() -> None:
    fig = loss_plot(_results())
    fig.legends.clear()
    fig.axes[0].legend(loc="center")
    assert legend_overlaps(fig) != []


def test_coinciding_rank_lines_stay_distinguishable() -> None:
    fig = _rank_figure()
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    tera, hira = lines["TeRA"], lines["HiRA (r=32)"]
    assert list(tera.get_ydata()) == list(hira.get_ydata())  # the same ranks ...
    assert tera.get_marker() != hira.get_marker()  # ... drawn with other markers
    assert tera.get_linestyle() != hira.get_linestyle()  # ... other line styles
    assert all(a != b for a, b in zip(tera.get_xdata(), hira.get_xdata(), strict=True))
    shifts = [abs(a - round(a)) for line in lines.values() for a in line.get_xdata()]
    assert max(shifts) <= 0.3 + 1e-9  # offsets stay well inside a layer
    markers = [line.get_marker() for line in lines.values()]
    assert len(set(markers)) == len(markers)


def test_log_axis_ticks_are_short_and_readable() -> None:
    fig = accuracy_plot(_results())
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert labels and all(len(t) <= 4 for t in labels), labels
    assert {"10k", "100k"} <= set(labels)
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    renderer = fig.canvas.get_renderer()
    boxes = [
        t.get_window_extent(renderer)
        for t in ax.get_xticklabels()
        if t.get_visible() and t.get_text()
    ]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_labels_are_mathtext_not_fake_tex() -> None:
    for fig in (PLOTS[name]() for name in PLOTS):
        for ax in fig.axes:
            for text in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()):
                assert "||" not in text, text
                assert "$" in text or not any(c in text for c in "^_\\"), text
                assert text.count("$") % 2 == 0, text
    assert "$" in _rank_figure().axes[0].get_ylabel()


def test_head_only_is_a_floor_line_and_every_adapter_a_point() -> None:
    fig = accuracy_plot(_results())
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "Head only (no adapter)" in labels
    assert {"TeRA", "VeRA (r=256)", "LoRA (r=8)"} <= set(labels)


def test_write_plots_writes_the_three_files(tmp_path: Path) -> None:
    r = _results()
    json.dumps(r)  # the layout of results.json
    names = write_plots(r, tmp_path)
    assert names == ["accuracy_vs_params.png", "ranks.png", "loss_curves.png"]
    for n in names:
        assert (tmp_path / n).stat().st_size > 10_000

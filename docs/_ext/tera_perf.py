"""The Performance page's charts and tables, generated from ``benchmarks/results/*.md``.

:func:`generate` writes PNG charts and Markdown tables into ``docs/_generated/`` at the start
of every build (the pages include them); nothing here is typed by hand. Ratio columns say how
they are computed:

* CPU tables: ``x base = ms / base ms`` of the same (J, tokens), so the ratio always agrees
  with the times beside it; the range is that of the per-repetition ratios.
* GPU tables: the files give times in steps of 0.1 ms (a bf16 base step is 0.2 ms), too
  coarse for a ratio, so these show the benchmark's median of per-repetition ratios (each
  repetition timed against the base in the same loop) and no ms column.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tera_numbers as tn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

_TOKENS_CPU = (512, 2048, 8192)


def _family(variant: str, j: int) -> str:
    """A stable legend name for a variant across layer widths."""
    if variant.startswith("TeRA"):
        return "TeRA, one unsplit mode" if variant.startswith(f"TeRA ({j} |") else "TeRA, split"
    return variant


_STYLE = {
    "LoRA r=32": ("tab:blue", "o", "-"),
    "PEFT LoRA r=32": ("tab:blue", "o", "--"),
    "VeRA r=256": ("tab:orange", "s", "-"),
    "PEFT VeRA r=256": ("tab:orange", "s", "--"),
    "HiRA r=32": ("tab:green", "^", "-"),
    "PEFT HiRA r=32": ("tab:green", "^", "--"),
    "TeRA, one unsplit mode": ("tab:red", "*", "-"),
    "TeRA, split": ("tab:purple", "P", "-"),
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(fig: Figure) -> None:
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8, frameon=False)


def _speed_panel(ax, name: str, j: int, paired: bool) -> None:  # type: ignore[no-untyped-def]
    rows = [r for r in tn.results_file(name).tables[0].rows if int(r["J"]) == j]
    tokens = sorted({int(r["tokens"]) for r in rows})
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "base"]
    for variant in variants:
        ys = [(tn.layer_paired if paired else tn.layer_xbase)(name, j, t, variant) for t in tokens]
        family = _family(variant, j)
        color, marker, ls = _STYLE.get(family, ("0.3", "o", "-"))
        ax.plot(
            tokens,
            ys,
            color=color,
            marker=marker,
            ls=ls,
            ms=8 if marker == "*" else 5,
            label=family,
        )
    ax.axhline(1.0, color="0.5", lw=1, ls=":")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(tokens))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([1, 1.5, 2, 3, 4, 6, 10, 20]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}x"))
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("tokens per step")


def speed_cpu() -> Figure:
    """The CPU speed figure: each adapter's layer step over the base layer's, J = 1024 and 2048."""
    fig = _figure(9.5, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, j in zip(axes, (1024, 2048), strict=True):
        _speed_panel(ax, tn.CPU, j, paired=False)
        ax.set_title(f"CPU, float32, Linear({j}, {j})", fontsize=10)
    axes[0].set_ylabel("training step / frozen layer's (ms ratio)")
    _legend(fig)
    return fig


def speed_gpu() -> Figure:
    """The GPU speed figure: the layer step over the base layer's in bfloat16 and float32."""
    fig = _figure(9.5, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, name, dtype in zip(axes, (tn.BF16, tn.FP32), ("bfloat16", "float32"), strict=True):
        _speed_panel(ax, name, 4096, paired=True)
        ax.set_title(f"H100, {dtype} base, Linear(4096, 4096)", fontsize=10)
    axes[0].set_ylabel("step / frozen layer's (median paired ratio)")
    _legend(fig)
    return fig


def memory() -> Figure:
    """The memory figure: what training holds beyond the base layer, per adapter."""
    fig = _figure(9.5, 4.2)
    axes = fig.subplots(1, 2, sharey=False)
    for ax, name, title in (
        (axes[0], tn.CPU, "CPU, float32, J = 1024, 2048 tokens"),
        (axes[1], tn.BF16, "H100, bf16 base, J = 4096, 8192 tokens"),
    ):
        rows = [r for r in tn.results_file(name).tables[1].rows if r["variant"] != "base"]
        labels = [r["variant"] for r in rows]
        peak = [tn.memory_row(name, v)[0] for v in labels]
        saved = [tn.memory_row(name, v)[1] for v in labels]
        ys = range(len(labels))
        ax.barh([y + 0.2 for y in ys], peak, height=0.4, color="tab:blue", label="peak extra")
        ax.barh(
            [y - 0.2 for y in ys], saved, height=0.4, color="tab:gray", label="saved for backward"
        )
        ax.axvline(tn.TARGETS["memory_j2"], color="tab:red", ls="--", lw=1, label="target for TeRA")
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(r"extra memory over the frozen layer ($J^2$ floats)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    _legend(fig)
    return fig


def model_step() -> Figure:
    """The SmolLM2-135M figure: the train step and the forward over the base model's."""
    fig = _figure(9.5, 3.6)
    axes = fig.subplots(1, 2)
    for ax, name, title in (
        (axes[0], "model_step", "SmolLM2-135M, CPU, float32"),
        (axes[1], "gpu_model_step_bf16", "SmolLM2-135M shape, H100, bf16"),
    ):
        rows = tn.results_file(name).tables[0].rows
        methods = [r["method"] for r in rows]
        ms = [tn.model_ms(name, m) for m in methods]
        lora = tn.model_ms(name, "LoRA (r=32)")
        bars = ax.barh(
            range(len(methods)),
            ms,
            color=["tab:red" if m == "TeRA" else "tab:blue" for m in methods],
        )
        for bar, value in zip(bars, ms, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {value / lora:.2f}x LoRA",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, max(ms) * 1.3)
        ax.set_xlabel("training step (ms, median)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    return fig


CHARTS = {
    "perf_speed_cpu.png": speed_cpu,
    "perf_speed_gpu.png": speed_gpu,
    "perf_memory.png": memory,
    "perf_model_step.png": model_step,
}


# -- Tables --------------------------------------------------------------------------------
def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def layer_table(name: str, paired: bool) -> str:
    """A layer-step table for the docs (with the paired ratios when ``paired``)."""
    rf = tn.results_file(name)
    if paired:
        head = (
            "| J | tokens | variant | x base (median paired ratio) | range | FLOPs x base | path |"
        )
    else:
        head = (
            "| J | tokens | variant | ms | x base (= ms / base ms) | range | FLOPs x base | path |"
        )
    lines = [f"Machine: {rf.machine}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rf.tables[0].rows:
        j, t, v = int(r["J"]), int(r["tokens"]), r["variant"]
        lo, hi = tn.layer_spread(name, j, t, v)
        cells = [str(j), f"{t:,}", _esc(v)]
        if paired:
            cells += [f"{tn.layer_paired(name, j, t, v):.2f}"]
        else:
            cells += [r["ms"], f"{tn.layer_xbase(name, j, t, v):.2f}"]
        cells += [f"{lo:.2f}..{hi:.2f}", r["FLOPs x base"], r["path"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def memory_table(name: str) -> str:
    """The memory table of a layer-step results file, for the docs."""
    table = tn.results_file(name).tables[1]
    lines = [
        "| " + " | ".join(_esc(h) for h in table.header) + " |",
        "|" + "---|" * len(table.header),
    ]
    lines += ["| " + " | ".join(_esc(r[h]) for h in table.header) + " |" for r in table.rows]
    return "\n".join(lines) + "\n"


def model_table(name: str) -> str:
    """The SmolLM2-135M step table, with each method's time over LoRA's, for the docs."""
    rf = tn.results_file(name)
    lora = tn.model_ms(name, "LoRA (r=32)")
    base = tn.model_ms(name, "base model", "forward ms")
    lines = [
        f"Machine: {rf.machine}",
        "",
        rf.notes[0] if rf.notes else "",
        "",
        "| method | train step ms | x LoRA (= ms / LoRA ms) | range |",
        "|---|---|---|---|",
    ]
    for r in rf.tables[0].rows:
        lo, hi = tn.model_spread(name, r["method"])
        lines.append(
            f"| {r['method']} | {r['train step ms']} | "
            f"{tn.model_ms(name, r['method']) / lora:.2f} | {lo:.2f}..{hi:.2f} |"
        )
    lines += ["", "| model | forward ms | x base (= ms / base ms) | range |", "|---|---|---|---|"]
    for r in rf.tables[1].rows:
        lo, hi = tn.model_spread(name, r["model"])
        lines.append(
            f"| {r['model']} | {r['forward ms']} | "
            f"{tn.model_ms(name, r['model'], 'forward ms') / base:.2f} | {lo:.2f}..{hi:.2f} |"
        )
    return "\n".join(lines) + "\n"


def half_table() -> str:
    """The GPU half-precision policy table, for the docs."""
    rf = tn.results_file("gpu_half_policy")
    t = rf.tables[0]
    keep = [h for h in t.header if h != "x base (min..max)"]
    head = [*keep[:4], "x base (= ms / base ms)", "range", *keep[4:]]
    lines = [f"Machine: {rf.machine}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base: dict[tuple[str, str], float] = {}
    for r in t.rows:
        key = (r["TeRA modes"], r["tokens"])
        ms = float(r["ms"])
        if r["policy"] == "base":
            base[key] = ms
        lo, hi = tn._range(r["x base (min..max)"])
        cells = [_esc(r[h]) for h in keep[:4]] + [f"{ms / base[key]:.2f}", f"{lo:.2f}..{hi:.2f}"]
        cells += [r[h] for h in keep[4:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sizes_table() -> str:
    """The adapter sizes table (trainable, Params (%), bytes per step and saved), for the docs."""
    rf = tn.results_file("adapter_sizes")
    lines = [
        "| adapter | trainable | Params (%) | all-reduced per step / held (float32) | saved "
        "| saved with `include_factors=True` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rf.tables[0].rows:
        mb = [
            f"{float(r[c].replace(',', '')) / 1e6:.2f} MB"
            for c in ("trainable bytes (float32)", "saved bytes", "saved bytes with factors")
        ]
        lines.append(
            f"| {_esc(r['adapter'])} | {r['trainable']} | {r['Params (%)']} | "
            + " | ".join(mb)
            + " |"
        )
    return "\n".join(lines) + "\n"


TABLES = {
    "layer_step_cpu.md": lambda: layer_table(tn.CPU, paired=False),
    "layer_step_gpu_bf16.md": lambda: layer_table(tn.BF16, paired=True),
    "layer_step_gpu_fp32.md": lambda: layer_table(tn.FP32, paired=True),
    "memory_cpu.md": lambda: memory_table(tn.CPU),
    "memory_gpu_bf16.md": lambda: memory_table(tn.BF16),
    "model_step_cpu.md": lambda: model_table("model_step"),
    "model_step_gpu_bf16.md": lambda: model_table("gpu_model_step_bf16"),
    "half_policy_gpu.md": half_table,
    "adapter_sizes.md": sizes_table,
}


def _write_if_changed(path: Path, data: bytes) -> None:
    if (
        not path.is_file()
        or hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest()
    ):
        path.write_bytes(data)


def generate(out: Path) -> list[Path]:
    """Write every chart and table into ``out``; unchanged files keep their timestamps."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in TABLES.items():
        _write_if_changed(out / name, make().encode())
        written.append(out / name)
    sources = [*sorted(tn.RESULTS.glob("*.md")), Path(__file__)]
    newest = max(p.stat().st_mtime for p in sources)
    for name, chart in CHARTS.items():
        path = out / name
        if not path.is_file() or path.stat().st_mtime < newest:
            chart().savefig(path, dpi=110)
        written.append(path)
    return written

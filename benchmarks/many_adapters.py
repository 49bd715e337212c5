"""Load 1,000 TeRA adapters onto SmolLM2-135M: load time and memory, measured.

The adapters are written by :func:`write_adapters` (random ``d`` vectors, the harness's TeRA
scheme on ``q_proj`` and ``v_proj``: (576 | 8, 8, 9) and (576 | 8, 8, 3); the test suite's
1,000-adapter test writes its folders with it too), then loaded one by one with
``load_adapter``. Reported: the time per adapter, the growth of the
process's resident memory against the adapters' own tensors (``adapter_bytes``), and the
frozen factors' bytes before and after (they must not grow: one storage for all).

Run: ``.venv/bin/python benchmarks/many_adapters.py [--adapters 1000] [--layers 30]
[--out benchmarks/results/many_adapters.md]`` on an otherwise idle machine (about a minute
on 2 cores for 1,000 adapters on the 30-layer model).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import emit, machine
from model_step import smollm2_shape

from tera.adapters import AdaptedModel, adapt, io, saving
from tera.compare.methods import METHODS, method_config

TARGETS = ("q_proj", "v_proj")


def _rss_bytes() -> int:
    """The process's resident set size (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _factor_bytes(model: AdaptedModel) -> int:
    return sum(t.numel() * t.element_size() for _, t in model.shared_factors.items())


def write_adapters(template: AdaptedModel, root: Path, n: int) -> list[Path]:
    """``n`` adapter folders of ``template``'s scheme with random d's."""
    meta = saving.adapter_meta(template, False, "default")
    state = saving.adapter_state(template, False, "default")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    g = torch.Generator().manual_seed(0)
    folders = []
    for i in range(n):
        tensors = {k: 1.0 + 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}
        folder = root / f"user{i:04d}"
        io.write_adapter(folder, meta, tensors)
        folders.append(folder)
    return folders


def run(adapters: int, layers: int) -> dict[str, float | int | str]:
    """Load ``adapters`` adapters onto a SmolLM2-shaped model of ``layers`` layers."""
    base = smollm2_shape(layers)
    config = method_config(METHODS["tera"], TARGETS, [576, 192])
    assert config is not None
    model = adapt(base, config)
    per_adapter = model.adapter_bytes()
    factors_before = _factor_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_adapters(model, Path(tmp), adapters)
        gc.collect()
        rss_before = _rss_bytes()
        start = time.perf_counter()
        for i, folder in enumerate(folders):
            model.load_adapter(folder, adapter_name=f"user{i:04d}")
        seconds = time.perf_counter() - start
        gc.collect()
        rss_after = _rss_bytes()
    return {
        "adapters": adapters,
        "layers": layers,
        "adapted_layers": len(model.adapter_layers),
        "seconds": seconds,
        "ms_per_adapter": 1000 * seconds / adapters,
        "adapter_bytes": per_adapter,
        "rss_growth_bytes": rss_after - rss_before,
        "rss_growth_per_adapter": (rss_after - rss_before) / adapters,
        "rss_over_tensors": (rss_after - rss_before) / (adapters * per_adapter),
        "factor_bytes_before": factors_before,
        "factor_bytes_after": _factor_bytes(model),
        "machine": machine(),
    }


def table(r: dict[str, float | int | str]) -> str:
    """The Markdown report."""
    kib = 1024
    lines = [
        f"Loading {r['adapters']:,} TeRA adapters onto a SmolLM2-135M-shaped model "
        f"({r['layers']} layers, {r['adapted_layers']} adapted q/v layers), one "
        f"`load_adapter` each. {r['machine']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| load time, total | {float(r['seconds']):.1f} s |",
        f"| load time per adapter | {float(r['ms_per_adapter']):.1f} ms |",
        f"| one adapter's tensors (`adapter_bytes`) | {int(r['adapter_bytes']) / kib:.1f} KiB |",
        f"| resident memory growth per adapter | "
        f"{float(r['rss_growth_per_adapter']) / kib:.1f} KiB |",
        f"| growth / the adapter's tensors | {float(r['rss_over_tensors']):.2f}x |",
        f"| frozen factors before / after | {int(r['factor_bytes_before']) / kib:.0f} KiB / "
        f"{int(r['factor_bytes_after']) / kib:.0f} KiB |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and write the report (Markdown and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/many_adapters.md"))
    args = parser.parse_args(argv)
    result = run(args.adapters, args.layers)
    emit(table(result), args.out)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

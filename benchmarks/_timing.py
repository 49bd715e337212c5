"""Shared helpers of the benchmarks: alternating repetitions, medians, machine description.

Every benchmark times all of its variants inside one loop (``for rep: for variant: run``),
so slow phases of a noisy machine hit every variant alike, and reports each variant's
median time and the median (with min..max) of its per-repetition ratio to the reference
variant measured in the same repetition.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tera.adapters.policy import cuda_tf32_enabled

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The ``--dtype`` choices of the benchmarks."""


def emit(text: str, out: Path | None) -> None:
    """Print a benchmark's Markdown and, if asked, write it to ``out``."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


@dataclass
class Timing:
    """Times (seconds) of one variant and its per-repetition ratios to the reference."""

    name: str
    times: list[float]
    ratios: list[float]

    @property
    def median_ms(self) -> float:
        """Median time in milliseconds."""
        return 1e3 * statistics.median(self.times)

    @property
    def ratio(self) -> float:
        """Median of the per-repetition ratios."""
        return statistics.median(self.ratios)

    def ratio_text(self) -> str:
        """``median (min..max)`` of the ratios."""
        return f"{self.ratio:.2f} ({min(self.ratios):.2f}..{max(self.ratios):.2f})"


def alternate(
    variants: dict[str, Callable[[], object]],
    reference: str,
    reps: int,
    warmup: int = 1,
    device: str = "cpu",
    inner: int = 1,
) -> dict[str, Timing]:
    """Run every variant ``reps`` times, alternating, after ``warmup`` untimed runs each.

    On a GPU (``device="cuda"``) each sample is ``inner`` back-to-back calls between two
    synchronizations, divided by ``inner`` (one step of a small layer is shorter than the
    launch latency the synchronization adds).
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / inner)
    ref = times[reference]
    return {
        name: Timing(name, ts, [t / r for t, r in zip(ts, ref, strict=True)])
        for name, ts in times.items()
    }


def machine(device: str = "cpu") -> str:
    """One line describing the CPU (and GPU), cores, threads and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        if found:
            cpu = found.group(1).strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    text = (
        f"{cpu}; {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        text = (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"TF32 matmul {'on' if cuda_tf32_enabled() else 'off'}); host: " + text
        )
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub/MyST Markdown table (``|`` inside cells escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "---|" * len(header)]
    lines += [line(row) for row in rows]
    return "\n".join(lines)

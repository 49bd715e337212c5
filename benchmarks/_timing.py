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

import torch


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
    variants: dict[str, Callable[[], object]], reference: str, reps: int, warmup: int = 1
) -> dict[str, Timing]:
    """Run every variant ``reps`` times, alternating, after ``warmup`` untimed runs each."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ref = times[reference]
    return {
        name: Timing(name, ts, [t / r for t, r in zip(ts, ref, strict=True)])
        for name, ts in times.items()
    }


def machine() -> str:
    """One line describing the CPU, cores, threads and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        if found:
            cpu = found.group(1).strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub/MyST Markdown table (``|`` inside cells escaped)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "---|" * len(header)]
    lines += [line(row) for row in rows]
    return "\n".join(lines)

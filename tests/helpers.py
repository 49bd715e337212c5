"""Strategies and comparison helpers shared by the tests.

Tolerances: the oracle comparisons (TensorLy, dense Kronecker products) evaluate the same
sums in a different order. In float64 each entry of a contraction over at most a few
thousand terms of O(1) values differs by at most ~n * eps * sum|terms|, i.e. below
1e-11 relative to the magnitude of the result, so ``assert_close`` uses ``rtol=1e-9`` and an
absolute floor of ``1e-9 * max(1, max |expected|)`` (several orders of magnitude of margin,
still far below any real bug, which shows up at O(1)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

BACKENDS = ("numpy", "torch")


@st.composite
def shapes(
    draw: st.DrawFn,
    min_order: int = 1,
    max_order: int = 6,
    min_size: int = 1,
    max_size: int = 7,
    max_elements: int = 3000,
) -> tuple[int, ...]:
    """Tensor shapes of order min_order..max_order, sizes min_size..max_size, bounded total."""
    order = draw(st.integers(min_order, max_order))
    out: list[int] = []
    budget = max_elements
    for i in range(order):
        remaining_min = min_size ** (order - i - 1)
        hi = max(min_size, min(max_size, budget // max(remaining_min, 1)))
        size = draw(st.integers(min_size, hi))
        out.append(size)
        budget //= size
    return tuple(out)


seeds = st.integers(0, 2**32 - 1)


def randn(shape: tuple[int, ...], seed: int, backend: str = "numpy") -> Any:
    """Standard-normal float64 data as a numpy array or torch tensor."""
    data = np.random.default_rng(seed).standard_normal(shape)
    return to_backend(data, backend)


def to_backend(x: np.ndarray, backend: str) -> Any:
    return torch.from_numpy(np.ascontiguousarray(x)) if backend == "torch" else x


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_close(actual: Any, expected: Any, rtol: float = 1e-9) -> None:
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
    np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-9 * scale)


def assert_equal(actual: Any, expected: Any) -> None:
    """Exact equality (for pure permutations of entries)."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    assert np.array_equal(a, e)


def prod(xs: Any) -> int:
    return math.prod(xs)

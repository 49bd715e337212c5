"""Which evaluation path each adapted layer took, recorded per caller, never on the layer.

An adapted layer picks, at every call, whether to *materialize* its update ``dW`` or *push*
the activations through the factors (:mod:`tera.adapters.engine`). To see the choice, wrap
the calls in :func:`trace_paths`: the layers write into a trace that belongs to the
current thread (or asyncio task) through a :class:`contextvars.ContextVar`, so calls from
other threads, each with its own trace or none, never see or change it. Nothing is stored
on the (shared) modules.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import LoRAConfig, adapt, trace_paths
>>> model = adapt(nn.Sequential(nn.Linear(256, 256)), LoRAConfig(r=4, target_modules=["0"]))
>>> layer = model.adapter_layers["0"]
>>> with torch.no_grad(), trace_paths() as trace:
...     _ = model(torch.randn(1, 256))
>>> trace[layer]
'push'
>>> with torch.no_grad(), trace_paths() as trace:
...     _ = model(torch.randn(4096, 256))
>>> trace[layer]
'materialize'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from tera.adapters.engine import EvalPath

__all__ = ["PathTrace", "record_path", "trace_paths"]


class PathTrace(Mapping[nn.Module, "EvalPath"]):
    """The path each adapted layer took in the calls traced so far (the last call wins).

    A read-only mapping ``layer -> "materialize" | "push"`` filled by :func:`trace_paths`.
    Only a layer's own forward with its base layer counts (a plain call of the active
    adapter); the rows of a mixed batch are not recorded.
    """

    def __init__(self) -> None:
        self._paths: dict[nn.Module, EvalPath] = {}  # modules hash by identity

    def __getitem__(self, layer: nn.Module) -> EvalPath:
        try:
            return self._paths[layer]
        except KeyError:
            raise KeyError(
                f"this {type(layer).__name__} ran no plain adapter call inside the trace "
                "(not called, merged, disabled, or only mixed-batch rows)"
            ) from None

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def _record(self, layer: nn.Module, path: EvalPath) -> None:
        self._paths[layer] = path

    def __repr__(self) -> str:
        return f"PathTrace({len(self)} layers: {dict(Counter(self._paths.values()))})"


_TRACE: ContextVar[PathTrace | None] = ContextVar("tera_path_trace", default=None)


@contextmanager
def trace_paths() -> Iterator[PathTrace]:
    """Record which path (materialize or push) each adapted layer takes inside the block.

    The trace belongs to the calling thread or task: concurrent calls of the same model from
    other threads are not recorded in it. Traces nest; the inner one receives the calls made
    inside it.

    Yields
    ------
    PathTrace
        ``trace[layer]`` is the path the layer's last plain call inside the block took.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt, trace_paths
    >>> model = adapt(nn.Sequential(nn.Linear(64, 64)),
    ...               TeRAConfig(in_mode=64, out_mode=4, target_modules=["0"]))
    >>> with trace_paths() as trace:
    ...     _ = model(torch.randn(2, 64))
    >>> sorted(set(trace.values()))
    ['push']
    """
    trace = PathTrace()
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def record_path(layer: nn.Module, path: EvalPath) -> None:
    """Note ``layer``'s path in the caller's trace, if one is open (the layers call this)."""
    trace = _TRACE.get()
    if trace is not None:
        trace._record(layer, path)

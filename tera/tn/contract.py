"""Contraction planning: opt_einsum expressions built once per (equation, shapes) and reused.

Planning a contraction order is far more expensive than evaluating a small one, and the
same shapes recur every training step, so plans are cached. A :class:`ContractionPlan`
exposes its FLOP count, its pairwise path and opt_einsum's human-readable report, which is
how the adapters' engine compares evaluation strategies on real shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import opt_einsum
import torch

from tera.errors import ShapeError
from tera.tn._backend import Array, check_same_backend

__all__ = ["ContractionPlan", "clear_plan_cache", "contract", "plan", "plan_cache_info"]


def promote(arrays: Sequence[Any]) -> list[Any]:
    """Cast torch tensors of mixed dtypes to their common dtype, as numpy does by itself.

    torch's matmul/tensordot/einsum refuse mixed dtypes (float32 with float64); numpy
    promotes. Casting keeps autograd intact.
    """
    dtypes = {a.dtype for a in arrays if isinstance(a, torch.Tensor)}
    if len(dtypes) <= 1:
        return list(arrays)
    dtype = functools.reduce(torch.promote_types, dtypes)
    return [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in arrays]


Shape = tuple[int, ...]


@dataclass(frozen=True)
class ContractionPlan:
    """A planned einsum: the order of pairwise contractions and what it costs.

    Build one with :func:`plan`; call it on operands of the planned shapes.

    Attributes
    ----------
    equation : str
        The einsum equation, e.g. ``"ab,bc->ac"``.
    shapes : tuple of tuple of int
        The operand shapes the plan was made for.
    path : tuple of tuple of int
        opt_einsum's pairwise contraction path.
    flops : int
        Estimated floating-point operations of the planned order.
    naive_flops : int
        Estimated cost of contracting everything in one go (no intermediate order).
    largest_intermediate : int
        Number of elements of the largest intermediate tensor.

    Examples
    --------
    >>> from tera.tn import plan
    >>> p = plan("ab,bc,cd->ad", (64, 2), (2, 64), (64, 64))
    >>> p.flops < p.naive_flops
    True
    """

    equation: str
    shapes: tuple[Shape, ...]
    path: tuple[tuple[int, ...], ...]
    flops: int
    naive_flops: int
    largest_intermediate: int
    _expression: Any = field(repr=False, compare=False)
    _report: str = field(repr=False, compare=False)

    def __call__(self, *operands: Array) -> Array:
        """Evaluate the planned contraction on numpy arrays or torch tensors."""
        got = tuple(tuple(op.shape) for op in operands)
        if got != self.shapes:
            raise ShapeError(
                f"this plan for {self.equation!r} was made for shapes {self.shapes}, "
                f"got {got}; make a new plan with tera.tn.plan(equation, *shapes)"
            )
        result: Array = self._expression(*operands)
        return result

    def report(self) -> str:
        """Return opt_einsum's description of the path (one line per pairwise step)."""
        return self._report


def _parse(equation: str, n_operands: int) -> tuple[list[str], str | None]:
    if not isinstance(equation, str):
        raise ShapeError(f"equation must be a str such as 'ab,bc->ac', got {equation!r}")
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != n_operands:
        raise ShapeError(
            f"equation {equation!r} names {len(inputs)} operand(s) but {n_operands} were given"
        )
    return inputs, (rhs if "->" in eq else None)


def _check_shapes(equation: str, shapes: Sequence[Shape]) -> None:
    inputs, _ = _parse(equation, len(shapes))
    sizes: dict[str, tuple[int, int]] = {}
    for i, (term, shape) in enumerate(zip(inputs, shapes, strict=True)):
        if "..." in term:
            return  # leave ellipsis broadcasting to opt_einsum
        if len(term) != len(shape):
            raise ShapeError(
                f"operand {i} of {equation!r} has {len(shape)} dimension(s) {tuple(shape)} "
                f"but its subscript {term!r} names {len(term)}"
            )
        for sym, size in zip(term, shape, strict=True):
            if sym in sizes and sizes[sym][0] != size:
                raise ShapeError(
                    f"index {sym!r} of {equation!r} has size {sizes[sym][0]} in operand "
                    f"{sizes[sym][1]} but size {size} in operand {i}"
                )
            sizes.setdefault(sym, (size, i))


@functools.lru_cache(maxsize=2048)
def _cached_plan(
    equation: str, shapes: tuple[Shape, ...], optimize: str, memory_limit: int | None
) -> ContractionPlan:
    for shape in shapes:
        if any(size < 0 for size in shape):
            raise ShapeError(
                f"shape {shape} given to plan {equation!r} has a negative size; sizes are >= 0"
            )
    _check_shapes(equation, shapes)
    try:
        path, info = opt_einsum.contract_path(
            equation, *shapes, shapes=True, optimize=optimize, memory_limit=memory_limit
        )
    except ValueError as err:
        raise ShapeError(f"cannot plan {equation!r} for shapes {shapes}: {err}") from err
    expression = opt_einsum.contract_expression(equation, *shapes, optimize=path)
    return ContractionPlan(
        equation=equation,
        shapes=shapes,
        path=tuple(tuple(step) for step in path),
        flops=int(info.opt_cost),
        naive_flops=int(info.naive_cost),
        largest_intermediate=int(info.largest_intermediate),
        _expression=expression,
        _report=str(info),
    )


def _shape_key(shape: Sequence[int]) -> Shape:
    from tera.tn.folding import as_int

    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ShapeError(f"each shape must be a sequence of ints, got {shape!r}")
    sizes = [as_int(s) for s in shape]
    if any(s is None for s in sizes):
        raise ShapeError(f"each shape must be a sequence of ints, got {shape!r}")
    return tuple(s for s in sizes if s is not None)


def plan(
    equation: str,
    *shapes: Sequence[int],
    optimize: str = "auto",
    memory_limit: int | None = None,
) -> ContractionPlan:
    """Plan an einsum for the given operand shapes, reusing a cached plan when possible.

    Parameters
    ----------
    equation : str
        Einsum equation with an explicit output, e.g. ``"ij,jk->ik"``.
    *shapes : sequence of int
        One shape per operand.
    optimize : str
        opt_einsum path strategy (``"auto"``, ``"optimal"``, ``"greedy"``, ...).
    memory_limit : int, optional
        Largest intermediate (in elements) a step may create. opt_einsum's cost model does
        not charge for memory: without a limit, ``"o,or,r,ri->oi"`` (VeRA) is planned
        through a 256 x 384 x 384 outer product, 60x slower than the GEMM order.

    Returns
    -------
    ContractionPlan
        The cached plan; identical arguments return the identical object.

    Examples
    --------
    >>> from tera.tn import plan
    >>> p = plan("ij,jk->ik", (2, 3), (3, 4))
    >>> p.flops, p.path
    (48, ((0, 1),))
    >>> plan("ij,jk->ik", (2, 3), (3, 4)) is p
    True
    """
    key = tuple(_shape_key(shape) for shape in shapes)
    return _cached_plan(equation, key, optimize, memory_limit)


def contract(equation: str, *operands: Array, optimize: str = "auto") -> Array:
    """Evaluate an einsum with a cached, planned contraction order.

    Works on numpy arrays and torch tensors (autograd intact); all operands must be of
    one kind and, for torch, on one device.

    Parameters
    ----------
    equation : str
        Einsum equation, e.g. ``"ij,jk->ik"``.
    *operands : numpy.ndarray or torch.Tensor
        The arrays to contract.
    optimize : str
        opt_einsum path strategy used when the shapes are planned for the first time.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The contraction, of the operands' kind.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import contract
    >>> a, b = np.ones((2, 3)), np.ones((3, 4))
    >>> contract("ij,jk->ik", a, b).shape
    (2, 4)
    """
    check_same_backend(operands, [f"operand {i}" for i in range(len(operands))])
    ops: list[Array] = promote(operands)
    return plan(equation, *(tuple(op.shape) for op in ops), optimize=optimize)(*ops)


def plan_cache_info() -> Any:
    """Hit/miss statistics of the plan cache (``functools.lru_cache`` info).

    Examples
    --------
    >>> from tera.tn import clear_plan_cache, plan, plan_cache_info
    >>> clear_plan_cache()
    >>> _ = plan("ij,jk->ik", (2, 3), (3, 4)); _ = plan("ij,jk->ik", (2, 3), (3, 4))
    >>> plan_cache_info().hits, plan_cache_info().misses
    (1, 1)
    """
    return _cached_plan.cache_info()


def clear_plan_cache() -> None:
    """Forget every cached plan (e.g. to measure planning time).

    Examples
    --------
    >>> from tera.tn import clear_plan_cache, plan_cache_info
    >>> clear_plan_cache()
    >>> plan_cache_info().currsize
    0
    """
    _cached_plan.cache_clear()

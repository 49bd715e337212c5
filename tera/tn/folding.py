r"""Folding and unfolding: the [N;k] matricization, mode-n unfoldings and tensorization schemes.

Conventions (row-major, C order, as in the paper's Eq. (1)):

* ``unfold(T, k)`` is the paper's :math:`\mathbf{A}_{[N;k]}`: the first ``k`` modes index the
  rows, the remaining ``N - k`` modes the columns, i.e. ``T.reshape(prod(I[:k]), -1)``.
* ``mode_unfold(T, n)`` is the mode-n unfolding ``moveaxis(T, n, 0).reshape(I[n], -1)``
  (TensorLy's ``unfold``).

All functions are pure permutations of entries: they accept numpy arrays and torch tensors,
never change values, and keep autograd intact.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from tera.errors import ShapeError, TensorizationError
from tera.tn._backend import Array, check_array, moveaxis

__all__ = [
    "fold",
    "mode_fold",
    "mode_unfold",
    "split_dim",
    "suggest_modes",
    "unfold",
    "valid_mode_sizes",
]


def as_int(value: object) -> int | None:
    """``value`` as an int if it is an integer (Python or numpy, not bool), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ShapeError(f"{name} must be a sequence of ints such as (2, 3, 4), got {shape!r}")
    sizes = [as_int(s) for s in shape]
    if any(s is None for s in sizes):
        raise ShapeError(f"{name} must be a sequence of ints such as (2, 3, 4), got {shape!r}")
    out = tuple(s for s in sizes if s is not None)
    if any(s < 0 for s in out):
        raise ShapeError(f"{name} {out} has a negative size; sizes must be >= 0")
    return out


def check_mode(n: int, order: int) -> int:
    """Return ``n`` as a non-negative mode index of an order-``order`` tensor, or raise."""
    index = as_int(n)
    if index is None:
        raise ShapeError(f"mode must be an int, got {n!r}")
    n = index
    if not -order <= n < order:
        valid = f"0..{order - 1} (or -{order}..-1)" if order else "none: the tensor is 0-d"
        raise ShapeError(f"mode {n} is out of range for an order-{order} tensor; use {valid}")
    return n % order


def _check_k(k: int, order: int) -> int:
    index = as_int(k)
    if index is None:
        raise ShapeError(f"k must be an int, got {k!r}")
    k = index
    if not 0 <= k <= order:
        raise ShapeError(
            f"k={k} is out of range for an order-{order} tensor; k counts the modes that "
            f"index the rows and must lie in 0..{order} (the paper uses 1 <= k < N)"
        )
    return k


def unfold(tensor: Array, k: int) -> Array:
    r"""Matricize an order-N tensor as in the paper's Eq. (1): :math:`\mathbf{A}_{[N;k]}`.

    The first ``k`` modes form the rows and the last ``N - k`` modes the columns, both in
    row-major (C) order, so ``unfold(T, k) == T.reshape(prod(I[:k]), -1)``.

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Tensor of shape ``(I_1, ..., I_N)``.
    k : int
        Number of leading modes that index the rows, ``0 <= k <= N``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Matrix of shape ``(prod(I[:k]), prod(I[k:]))``, same type as ``tensor``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import unfold
    >>> T = np.arange(24).reshape(2, 3, 4)
    >>> unfold(T, 2).shape
    (6, 4)
    >>> int(unfold(T, 1)[1, 5])  # T[1, 1, 1]
    17
    """
    check_array(tensor, "tensor")
    shape = tuple(tensor.shape)
    k = _check_k(k, len(shape))
    return tensor.reshape(math.prod(shape[:k]), math.prod(shape[k:]))


def fold(matrix: Array, shape: Sequence[int], k: int) -> Array:
    r"""Inverse of :func:`unfold`: :math:`\mathrm{Fold}_{[N;k]}`.

    Parameters
    ----------
    matrix : numpy.ndarray or torch.Tensor
        Matrix of shape ``(prod(shape[:k]), prod(shape[k:]))``.
    shape : sequence of int
        Shape ``(I_1, ..., I_N)`` of the tensor to rebuild.
    k : int
        Number of leading modes that index the rows.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Tensor of shape ``shape`` with ``unfold(fold(M, shape, k), k) == M``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import fold, unfold
    >>> T = np.arange(24).reshape(2, 3, 4)
    >>> bool((fold(unfold(T, 1), (2, 3, 4), 1) == T).all())
    True
    """
    check_array(matrix, "matrix")
    shape_t = _check_shape(shape)
    k = _check_k(k, len(shape_t))
    rows, cols = math.prod(shape_t[:k]), math.prod(shape_t[k:])
    if matrix.ndim != 2 or tuple(matrix.shape) != (rows, cols):
        raise ShapeError(
            f"cannot fold a matrix of shape {tuple(matrix.shape)} into {shape_t} with k={k}: "
            f"expected a matrix of shape ({rows}, {cols}) = (prod(shape[:{k}]), "
            f"prod(shape[{k}:]))"
        )
    return matrix.reshape(shape_t)


def mode_unfold(tensor: Array, n: int) -> Array:
    """Mode-n unfolding: ``moveaxis(T, n, 0).reshape(I_n, -1)`` (TensorLy's ``unfold``).

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Tensor of order ``N >= 1``.
    n : int
        The mode that indexes the rows (negative values count from the end).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Matrix of shape ``(I_n, prod of the other sizes)``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import mode_unfold
    >>> mode_unfold(np.zeros((2, 3, 4)), 1).shape
    (3, 8)
    """
    check_array(tensor, "tensor")
    n = check_mode(n, tensor.ndim)
    others = math.prod(s for m, s in enumerate(tensor.shape) if m != n)
    return moveaxis(tensor, n, 0).reshape(tensor.shape[n], others)


def mode_fold(matrix: Array, n: int, shape: Sequence[int]) -> Array:
    """Inverse of :func:`mode_unfold`.

    Parameters
    ----------
    matrix : numpy.ndarray or torch.Tensor
        Matrix of shape ``(I_n, prod of the other sizes)``.
    n : int
        The mode that the rows index.
    shape : sequence of int
        Shape of the tensor to rebuild.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Tensor of shape ``shape``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import mode_fold, mode_unfold
    >>> T = np.arange(24).reshape(2, 3, 4)
    >>> bool((mode_fold(mode_unfold(T, 2), 2, T.shape) == T).all())
    True
    """
    check_array(matrix, "matrix")
    shape_t = _check_shape(shape)
    n = check_mode(n, len(shape_t))
    rest: tuple[int, ...] = shape_t[:n] + shape_t[n + 1 :]
    expected = (shape_t[n], math.prod(rest))
    if matrix.ndim != 2 or tuple(matrix.shape) != expected:
        raise ShapeError(
            f"cannot mode-{n} fold a matrix of shape {tuple(matrix.shape)} into {shape_t}: "
            f"expected shape {expected}"
        )
    return moveaxis(matrix.reshape((shape_t[n], *rest)), 0, n)


def _check_size(value: object, name: str = "size", minimum: int | None = 1) -> int:
    size = as_int(value)
    if size is None:
        raise TensorizationError(f"{name} must be an int, got {value!r}")
    if minimum is not None and size < minimum:
        raise TensorizationError(f"{name} must be >= {minimum}, got {size}")
    return size


def _int_root(size: int, p: int) -> int | None:
    """Return the integer m with m**p == size, or None."""
    m = round(math.pow(size, 1.0 / p))
    for cand in (m - 1, m, m + 1):
        if cand >= 2 and cand**p == size:
            return cand
    return None


def valid_mode_sizes(size: int) -> tuple[int, ...]:
    """All mode sizes ``m >= 2`` that split ``size`` into equal modes (``size == m**p``).

    ``size`` itself is always included (it keeps the dimension whole).

    Examples
    --------
    >>> from tera.tn import valid_mode_sizes
    >>> valid_mode_sizes(4096)
    (2, 4, 8, 16, 64, 4096)
    >>> valid_mode_sizes(576)
    (24, 576)
    """
    size = _check_size(size)
    if size < 2:
        return (size,)
    found = {size}
    for p in range(2, size.bit_length() + 1):
        m = _int_root(size, p)
        if m is not None:
            found.add(m)
    return tuple(sorted(found))


def suggest_modes(size: int, mode_size: int) -> tuple[int, ...]:
    """Greedy split of ``size`` into factors no larger than ``mode_size`` (largest first).

    Useful when ``size`` is not a power of ``mode_size``: the result can be passed as
    explicit, unequal modes. A prime factor larger than ``mode_size`` stays as it is.

    Parameters
    ----------
    size : int
        The dimension to split.
    mode_size : int
        The largest mode wanted.

    Returns
    -------
    tuple of int
        Modes in decreasing order whose product is ``size``.

    Examples
    --------
    >>> from tera.tn import suggest_modes
    >>> suggest_modes(4096, 6)
    (4, 4, 4, 4, 4, 4)
    >>> suggest_modes(576, 8)
    (8, 8, 3, 3)
    """
    size = _check_size(size)
    mode_size = _check_size(mode_size, "mode_size", minimum=None)
    if size < 2 or mode_size < 2:
        return (size,)
    modes: list[int] = []
    rest = size
    while rest > 1:
        divisor = next((d for d in range(min(mode_size, rest), 1, -1) if rest % d == 0), None)
        if divisor is None:  # every divisor of rest is larger than mode_size: keep it whole
            divisor = next(d for d in range(2, rest + 1) if rest % d == 0)
        modes.append(divisor)
        rest //= divisor
    return tuple(sorted(modes, reverse=True))


def split_dim(size: int, mode_size: int) -> tuple[int, ...]:
    """Split a dimension into equal modes: ``split_dim(4096, 8) == (8, 8, 8, 8)``.

    A ``mode_size >= size`` keeps the dimension whole, ``(size,)``, as the paper does with
    ``outdim=4096`` on a 1024-wide layer.

    Parameters
    ----------
    size : int
        The dimension to split (e.g. a layer's ``in_features``), ``>= 1``.
    mode_size : int
        The size of every mode, ``>= 2``.

    Returns
    -------
    tuple of int
        Modes whose product is ``size``.

    Raises
    ------
    TensorizationError
        If ``size`` is not a power of ``mode_size``; the message lists the mode sizes that
        work and an explicit, unequal split that can be passed instead.

    Examples
    --------
    >>> from tera.tn import split_dim
    >>> split_dim(4096, 8)
    (8, 8, 8, 8)
    >>> split_dim(1024, 4096)
    (1024,)
    >>> split_dim(4096, 6)
    Traceback (most recent call last):
    ...
    tera.errors.TensorizationError: 4096 cannot be split into modes of 6; use one of 2, 4, 8, 16, 64, 4096, or pass explicit modes such as (4, 4, 4, 4, 4, 4)
    """  # noqa: E501
    size = _check_size(size)
    mode_size = _check_size(mode_size, "mode_size", minimum=None)
    if mode_size < 2:
        raise TensorizationError(
            f"mode_size must be >= 2, got {mode_size}; a mode of size 1 adds nothing, "
            f"use a mode size >= {max(size, 2)} to keep the dimension whole"
        )
    if mode_size >= size:
        return (size,)
    modes: list[int] = []
    rest = size
    while rest % mode_size == 0:
        modes.append(mode_size)
        rest //= mode_size
    if rest != 1:
        valid = ", ".join(str(m) for m in valid_mode_sizes(size))
        raise TensorizationError(
            f"{size} cannot be split into modes of {mode_size}; use one of {valid}, "
            f"or pass explicit modes such as {suggest_modes(size, mode_size)}"
        )
    return tuple(modes)

"""Exceptions raised by tera.

Every error subclasses both :class:`TeraError` and the built-in exception a caller would
expect (``ValueError`` or ``TypeError``), so ``except ValueError`` keeps working. Messages
name the bad value and say what would be valid.

Examples
--------
>>> from tera.errors import ShapeError
>>> try:
...     raise ShapeError("mode 3 is out of range for an order-2 tensor; use 0 or 1")
... except ValueError as err:
...     print(err)
mode 3 is out of range for an order-2 tensor; use 0 or 1
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "RankError",
    "ShapeError",
    "TensorizationError",
    "TeraError",
]


class TeraError(Exception):
    """Base class of every exception raised by tera."""


class ShapeError(TeraError, ValueError):
    """An array has the wrong order or size for the operation (names the sizes found)."""


class TensorizationError(ShapeError):
    """A dimension cannot be split into the requested modes (lists the valid mode sizes)."""


class RankError(TeraError, ValueError):
    """A rank is below 1 or larger than the size it must not exceed."""


class BackendError(TeraError, TypeError):
    """Inputs are not numpy arrays / torch tensors, or mix the two."""

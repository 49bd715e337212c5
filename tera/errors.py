"""Exceptions raised by tera.

Every error subclasses both :class:`TeraError` and the built-in exception a caller would
expect (``ValueError``, ``TypeError`` or ``OSError``), so ``except ValueError`` keeps
working. Messages name the bad value and say what would be valid.

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
    "AdapterStateError",
    "BackendError",
    "ConfigError",
    "DTypeError",
    "DependencyError",
    "FingerprintError",
    "FormatError",
    "LoadError",
    "MergeError",
    "RankError",
    "SaveError",
    "ShapeError",
    "TargetError",
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


class ConfigError(TeraError, ValueError, TypeError):
    """A bad adapter configuration: a field with a bad value, or not a config at all.

    Bad values are e.g. ``in_mode=1``, ``dropout=2`` or a ``zero_init`` that is no mode of
    the layer; a wrong type e.g. ``adapt(model, "tera")``.

    Catchable as ``ValueError`` (a bad value) and as ``TypeError`` (a wrong type).
    """


class TargetError(TeraError, ValueError):
    """``target_modules`` matched nothing, or matched a module that cannot be adapted."""


class AdapterStateError(TeraError, ValueError):
    """An operation does not fit the adapter's state (adapting twice, merging twice, ...)."""


class MergeError(TeraError, ValueError):
    """Merging would write NaN/inf or otherwise corrupt the base weights."""


class LoadError(TeraError, ValueError):
    """A saved adapter cannot be loaded as it is (missing/corrupt files, other shapes, ...)."""


class SaveError(TeraError, OSError):
    """An adapter cannot be written where asked (names the path, the reason and the fix).

    E.g. a read-only folder, a path that is a file, a full disk. Catchable as ``OSError``.
    A save that raises it leaves the previous version of every file it would have written
    (or, past the commit point, the new one: the message says which).
    """


class FingerprintError(LoadError):
    """The frozen shared factors differ from the ones the adapter was trained with."""


class FormatError(TeraError, ValueError):
    """An adapter cannot be saved in the requested file format (names the format and why).

    E.g. ``save_pretrained(directory, format="peft")`` on a TeRA adapter, which PEFT does
    not implement, or an unknown ``format``.
    """


class DTypeError(TeraError, TypeError):
    """A tensor has a dtype the operation does not support (e.g. integer weights)."""


class DependencyError(TeraError, ImportError):
    """An optional package a feature needs is not installed (names it and the pip command)."""

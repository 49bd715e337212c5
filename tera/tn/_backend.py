"""A minimal dispatch layer so every ``tera.tn`` routine accepts numpy arrays and torch tensors.

Only the handful of operations the algebra needs live here; each keeps the input's type,
dtype and device, and torch operations keep autograd intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch

from tera.errors import BackendError

Array = TypeVar("Array", npt.NDArray[Any], torch.Tensor)
"""A numpy array or a torch tensor; a function returns the type it was given."""


def is_torch(x: object) -> bool:
    """Return True when ``x`` is a torch tensor."""
    return isinstance(x, torch.Tensor)


def check_array(x: object, name: str) -> None:
    """Raise :class:`BackendError` unless ``x`` is a numpy array or a torch tensor."""
    if not isinstance(x, np.ndarray | torch.Tensor):
        raise BackendError(
            f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}; "
            f"convert it with numpy.asarray(...) or torch.as_tensor(...)"
        )


def check_same_backend(arrays: Sequence[object], names: Sequence[str]) -> None:
    """Raise :class:`BackendError` if the arrays are not all numpy or all torch."""
    for arr, name in zip(arrays, names, strict=True):
        check_array(arr, name)
    kinds = {is_torch(a) for a in arrays}
    if len(kinds) > 1:
        described = ", ".join(
            f"{n}: {'torch.Tensor' if is_torch(a) else 'numpy.ndarray'}"
            for a, n in zip(arrays, names, strict=True)
        )
        raise BackendError(
            f"inputs mix numpy arrays and torch tensors ({described}); "
            "convert them all to one kind first"
        )
    if kinds == {True}:
        devices = {a.device for a in arrays if isinstance(a, torch.Tensor)}
        if len(devices) > 1:
            raise BackendError(
                f"torch inputs live on different devices ({sorted(map(str, devices))}); "
                "move them to one device with .to(device)"
            )


def moveaxis(x: Array, source: int, destination: int) -> Array:
    """Move one axis of ``x`` to a new position (a view where possible)."""
    if isinstance(x, torch.Tensor):
        return torch.movedim(x, source, destination)
    return np.moveaxis(x, source, destination)


def tensordot(a: Array, b: Array, axes: tuple[Sequence[int], Sequence[int]]) -> Array:
    """Contract ``a`` and ``b`` over the paired axes (``numpy.tensordot`` semantics)."""
    if isinstance(a, torch.Tensor):
        return cast(Array, torch.tensordot(a, b, dims=(list(axes[0]), list(axes[1]))))
    return np.tensordot(a, b, axes=(list(axes[0]), list(axes[1])))


def kron2(a: Array, b: Array) -> Array:
    """Kronecker product of two matrices."""
    if isinstance(a, torch.Tensor):
        return cast(Array, torch.kron(a, b))
    return np.kron(a, b)


def svd(x: Array, full_matrices: bool = False) -> tuple[Array, Array, Array]:
    """Thin (or full) SVD ``x = U diag(S) Vh`` of a matrix."""
    if isinstance(x, torch.Tensor):
        u, s, vh = torch.linalg.svd(x, full_matrices=full_matrices)
        return u, s, vh
    u_np, s_np, vh_np = np.linalg.svd(x, full_matrices=full_matrices)
    return u_np, s_np, vh_np


def norm(x: Array) -> float:
    """Frobenius norm of an array of any order, as a Python float."""
    if isinstance(x, torch.Tensor):
        return float(torch.linalg.vector_norm(x.detach()))
    return float(np.linalg.norm(x.reshape(-1)))


def fix_signs(u: Array) -> Array:
    """Flip column signs so that each column's largest-magnitude entry is positive.

    Makes SVD-based results deterministic across backends and LAPACK builds.
    """
    if u.shape[0] == 0 or u.shape[1] == 0:
        return u
    if isinstance(u, torch.Tensor):
        idx = torch.argmax(u.abs(), dim=0)
        signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
        signs = torch.where(signs == 0, torch.ones_like(signs), signs)
        return u * signs
    idx_np = np.argmax(np.abs(u), axis=0)
    signs_np = np.sign(u[idx_np, np.arange(u.shape[1])])
    signs_np[signs_np == 0] = 1
    return cast(Array, u * signs_np)


def is_floating(x: Array) -> bool:
    """Return True for real or complex floating dtypes."""
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() or x.is_complex()
    return bool(np.issubdtype(x.dtype, np.inexact))

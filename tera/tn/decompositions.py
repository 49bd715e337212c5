r"""Decompositions into the Tucker format: truncated HOSVD and HOOI (paper Section 2).

The format itself (:class:`~tera.tn.tucker.Tucker`, reconstruction, the Kronecker form) is
:mod:`tera.tn.tucker`; factors are ``R_i x I_i`` as there.

Examples
--------
>>> import numpy as np
>>> from tera.tn import hosvd, tucker_to_tensor
>>> X = np.random.default_rng(0).standard_normal((4, 5, 6))
>>> core, factors = hosvd(X)   # full ranks: exact
>>> bool(np.allclose(tucker_to_tensor(core, factors), X))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tera.errors import RankError, ShapeError
from tera.tn._backend import (
    Array,
    check_array,
    fix_signs,
    is_floating,
    norm,
    svd,
)
from tera.tn.folding import as_int, mode_unfold
from tera.tn.products import multi_mode_product
from tera.tn.tucker import Tucker

__all__ = ["hooi", "hosvd"]


def _check_ranks(ranks: int | Sequence[int] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    if ranks is None:
        return shape
    bad = RankError(
        f"ranks must be an int, a sequence of ints (one per mode) or None, got {ranks!r}"
    )
    one = as_int(ranks)
    if one is not None:
        rank_t: tuple[int, ...] = (one,) * len(shape)
    elif isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise bad
    else:
        values = [as_int(r) for r in ranks]
        if any(v is None for v in values):
            raise bad
        rank_t = tuple(v for v in values if v is not None)
    if len(rank_t) != len(shape):
        raise RankError(
            f"ranks {rank_t} give {len(rank_t)} values for an order-{len(shape)} tensor of "
            f"shape {shape}; give one rank per mode"
        )
    for i, (r, size) in enumerate(zip(rank_t, shape, strict=True)):
        limit = min(size, math.prod(s for j, s in enumerate(shape) if j != i))
        if not 1 <= r <= limit:
            raise RankError(
                f"rank R_{i + 1} = {r} is invalid for mode {i} of shape {shape}: it must lie in "
                f"1..{limit} (the mode size, and at most the product of the other sizes)"
            )
    return rank_t


def _leading_vectors(matrix: Array, r: int) -> Array:
    """The ``r`` leading left singular vectors (as columns), with deterministic signs."""
    u, _, _ = svd(matrix, full_matrices=False)
    return fix_signs(u[:, :r])


def hosvd(tensor: Array, ranks: int | Sequence[int] | None = None) -> Tucker:
    r"""Truncated higher-order SVD (De Lathauwer et al., 2000).

    Factor ``i`` holds the ``R_i`` leading left singular vectors of the mode-i unfolding as
    rows (``R_i x I_i``); the core is the tensor projected onto them. Exact when the tensor's
    multilinear rank is at most ``ranks``; otherwise the error is at most ``sqrt(N)`` times the
    best rank-``ranks`` Tucker error.

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Floating tensor of order ``N``.
    ranks : int or sequence of int, optional
        Target multilinear ranks; an int applies to every mode; ``None`` keeps full ranks.

    Returns
    -------
    Tucker
        ``(core, factors)`` with orthonormal rows in each factor.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import hosvd
    >>> T = np.random.default_rng(0).standard_normal((4, 5, 6))
    >>> core, factors = hosvd(T, ranks=(2, 3, 4))
    >>> core.shape, [f.shape for f in factors]
    ((2, 3, 4), [(2, 4), (3, 5), (4, 6)])
    >>> np.allclose(hosvd(T).to_tensor(), T)
    True
    """
    check_array(tensor, "tensor")
    _check_floating(tensor)
    shape = tuple(int(s) for s in tensor.shape)
    rank_t = _check_ranks(ranks, shape)
    us = [_leading_vectors(mode_unfold(tensor, n), r) for n, r in enumerate(rank_t)]
    core = multi_mode_product(tensor, us)
    return Tucker(core, [u.T for u in us])


def _check_floating(tensor: Array) -> None:
    if not is_floating(tensor):
        raise ShapeError(
            f"tensor must have a floating dtype, got {tensor.dtype}; convert it with "
            ".astype(float) / .to(torch.float64)"
        )


def hooi(
    tensor: Array,
    ranks: int | Sequence[int] | None = None,
    n_iter: int = 100,
    tol: float = 1e-10,
) -> Tucker:
    r"""Higher-order orthogonal iteration: the best rank-``ranks`` Tucker approximation (ALS).

    Starts from :func:`hosvd` and alternately re-fits each factor to the leading left
    singular vectors of the tensor projected on all other factors. Each sweep cannot
    increase the reconstruction error, so the result is never worse than the HOSVD.

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Floating tensor of order ``N``.
    ranks : int or sequence of int, optional
        Target multilinear ranks (see :func:`hosvd`).
    n_iter : int
        Maximum number of sweeps.
    tol : float
        Stop when the relative change of the core's norm in one sweep is below ``tol``.

    Returns
    -------
    Tucker
        ``(core, factors)``, factors ``R_i x I_i`` with orthonormal rows.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import hooi, hosvd
    >>> T = np.random.default_rng(0).standard_normal((5, 5, 5))
    >>> err = lambda t: np.linalg.norm(T - t.to_tensor())
    >>> bool(err(hooi(T, 2)) <= err(hosvd(T, 2)) + 1e-12)
    True
    """
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ShapeError(f"n_iter must be an int >= 0, got {n_iter!r}")
    if tol < 0:
        raise ShapeError(f"tol must be >= 0, got {tol!r}")
    core, factors = hosvd(tensor, ranks)
    us = [f.T for f in factors]  # I_i x R_i: projecting with x_i u_i shrinks mode i
    order = tensor.ndim
    core_norm = norm(core)
    for _ in range(n_iter):
        for n in range(order):
            others = [m for m in range(order) if m != n]
            projected = multi_mode_product(tensor, [us[m] for m in others], modes=others)
            us[n] = _leading_vectors(mode_unfold(projected, n), us[n].shape[1])
        core = multi_mode_product(tensor, us)
        new_norm = norm(core)
        converged = abs(new_norm - core_norm) <= tol * max(new_norm, 1e-300)
        core_norm = new_norm
        if converged:
            break
    return Tucker(core, [u.T for u in us])

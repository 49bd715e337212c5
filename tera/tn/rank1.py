r"""Best rank-1 approximation (HOPM / rank-1 ALS) and the tensor spectral norm estimate.

The tensor spectral norm is
:math:`\|\mathcal{Z}\|_2 = \sup_{\|u^{(i)}\|=1} \mathcal{Z} \times_1 u^{(1)} \cdots
\times_N u^{(N)}`, and the best rank-1 approximation error is
:math:`\|\mathcal{Z}\|_F^2 - \|\mathcal{Z}\|_2^2` (De Lathauwer et al., 2000b). Computing the
spectral norm is NP-hard for ``N >= 3``; the higher-order power method (HOPM) reaches a
stationary point, so its value is a *lower bound* of the true norm, and with the matching
vectors it achieves exactly the error ``||Z||_F^2 - scale**2``. That is what Theorem 3 needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import opt_einsum
import torch

from tera.errors import ShapeError
from tera.tn._backend import Array, check_array, norm
from tera.tn.contract import contract
from tera.tn.decompositions import _check_floating, _leading_vectors
from tera.tn.folding import mode_unfold

__all__ = ["Rank1Approximation", "rank1_approx", "spectral_norm"]


class Rank1Approximation(NamedTuple):
    """A rank-1 tensor ``scale * outer(u_1, ..., u_N)`` with unit-norm vectors ``u_i``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import rank1_approx
    >>> T = np.einsum("i,j,k->ijk", [1., 2.], [3., 0., 4.], [1., 1.])
    >>> approx = rank1_approx(T)
    >>> round(approx.scale, 6), np.allclose(approx.to_tensor(), T)
    (15.811388, True)
    """

    vectors: list[Any]
    scale: float

    def to_tensor(self) -> Any:
        """The full rank-1 tensor ``scale * outer(vectors)``."""
        syms = [opt_einsum.get_symbol(i) for i in range(len(self.vectors))]
        return contract(",".join(syms) + "->" + "".join(syms), *self.vectors) * self.scale


def _contract_all_but(tensor: Array, vectors: list[Array], n: int) -> Array:
    syms = [opt_einsum.get_symbol(i) for i in range(tensor.ndim)]
    others = [m for m in range(tensor.ndim) if m != n]
    equation = "".join(syms) + "".join("," + syms[m] for m in others) + "->" + syms[n]
    return contract(equation, tensor, *(vectors[m] for m in others))


def _hopm(tensor: Array, vectors: list[Array], n_iter: int, tol: float) -> Rank1Approximation:
    scale = 0.0
    for _ in range(max(n_iter, 1)):
        previous = scale
        for n in range(tensor.ndim):
            v = _contract_all_but(tensor, vectors, n)
            v_norm = norm(v)
            if v_norm == 0.0:
                return Rank1Approximation(vectors, 0.0)
            vectors[n] = v / v_norm
            scale = v_norm
        if abs(scale - previous) <= tol * scale:
            break
    return Rank1Approximation(vectors, scale)


def _check_iter(n_iter: int, tol: float) -> None:
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ShapeError(f"n_iter must be an int >= 1, got {n_iter!r}")
    if not tol >= 0:
        raise ShapeError(f"tol must be >= 0, got {tol!r}")


def rank1_approx(tensor: Array, n_iter: int = 500, tol: float = 1e-12) -> Rank1Approximation:
    r"""Best rank-1 approximation by the higher-order power method (HOPM, rank-1 ALS).

    Starts from the leading left singular vector of every mode-n unfolding (HOSVD
    initialization) and updates one vector at a time to
    ``Z x_{m != n} u_m / ||...||`` until the scale stops changing.

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Floating tensor of order ``N >= 1``.
    n_iter : int
        Maximum number of sweeps over the modes.
    tol : float
        Relative change of the scale below which the iteration stops.

    Returns
    -------
    Rank1Approximation
        ``(vectors, scale)``: ``N`` unit vectors and ``scale = Z(u_1, ..., u_N) >= 0``; the
        approximation error is exactly ``||Z||_F**2 - scale**2``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import rank1_approx
    >>> Z = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> vectors, scale = rank1_approx(Z)
    >>> [v.shape for v in vectors]
    [(3,), (4,), (5,)]
    >>> err = np.linalg.norm(Z - rank1_approx(Z).to_tensor()) ** 2
    >>> bool(np.isclose(err, np.linalg.norm(Z) ** 2 - scale ** 2))
    True
    """
    check_array(tensor, "tensor")
    _check_floating(tensor)
    _check_iter(n_iter, tol)
    if tensor.ndim == 0 or any(s == 0 for s in tensor.shape):
        raise ShapeError(
            f"rank1_approx needs a tensor of order >= 1 with no empty mode, got shape "
            f"{tuple(tensor.shape)}"
        )
    vectors = [_leading_vectors(mode_unfold(tensor, n), 1)[:, 0] for n in range(tensor.ndim)]
    return _hopm(tensor, vectors, n_iter, tol)


def spectral_norm(
    tensor: Array, n_iter: int = 500, tol: float = 1e-12, n_restarts: int = 0, seed: int = 0
) -> float:
    r"""Estimate the tensor spectral norm :math:`\|\mathcal{Z}\|_2` from below.

    Runs HOPM from the HOSVD initialization and from ``n_restarts`` random unit vectors and
    returns the largest value found. Every value is ``Z(u_1, ..., u_N)`` for unit vectors, so
    the estimate never exceeds the true spectral norm; for a matrix (``N = 2``) it is the
    largest singular value.

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Floating tensor of order ``N >= 1``.
    n_iter, tol : int, float
        As in :func:`rank1_approx`.
    n_restarts : int
        Extra random initializations (deterministic given ``seed``).
    seed : int
        Seed of the random initializations.

    Returns
    -------
    float
        The estimate (a lower bound of the true spectral norm).

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import spectral_norm
    >>> M = np.random.default_rng(0).standard_normal((4, 6))
    >>> bool(np.isclose(spectral_norm(M), np.linalg.norm(M, 2)))
    True
    """
    if not isinstance(n_restarts, int) or n_restarts < 0:
        raise ShapeError(f"n_restarts must be an int >= 0, got {n_restarts!r}")
    best = rank1_approx(tensor, n_iter=n_iter, tol=tol).scale
    rng = np.random.default_rng(seed)
    for _ in range(n_restarts):
        vectors: list[Array] = []
        for size in tensor.shape:
            v = rng.standard_normal(size)
            v /= np.linalg.norm(v)
            if isinstance(tensor, torch.Tensor):
                vectors.append(torch.as_tensor(v, dtype=tensor.dtype, device=tensor.device))
            else:
                vectors.append(v.astype(tensor.dtype))
        best = max(best, _hopm(tensor, vectors, n_iter, tol).scale)
    return best

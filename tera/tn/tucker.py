r"""Tucker tensors in the paper's convention: factors are :math:`R_i \times I_i` (Eq. 4/10).

.. math:: \mathcal{X} = \mathcal{G} \times_1 \mathbf{B}^{(1)} \times_2 \cdots
          \times_N \mathbf{B}^{(N)},\qquad
          \mathbf{X}_{[N;k]} = \Big(\bigotimes_{i \le k} \mathbf{B}^{(i)}\Big)^{\top}
          \mathbf{G}_{[N;k]} \Big(\bigotimes_{i > k} \mathbf{B}^{(i)}\Big)\quad\text{(Eq. 15)}

TensorLy stores factors as :math:`I_i \times R_i`; convert with ``[f.T for f in factors]``.
The format only: decompositions into it (HOSVD, HOOI) are in :mod:`tera.tn.decompositions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from tera.errors import ShapeError
from tera.tn._backend import (
    Array,
    check_array,
    check_same_backend,
)
from tera.tn.folding import unfold
from tera.tn.products import check_matrices, kron_apply, multi_mode_product

__all__ = ["Tucker", "tucker_to_matrix", "tucker_to_tensor"]


class Tucker(NamedTuple):
    """A Tucker tensor ``(core, factors)``; unpacks like a tuple.

    Attributes
    ----------
    core : numpy.ndarray or torch.Tensor
        Core tensor of shape ``(R_1, ..., R_N)``.
    factors : list of numpy.ndarray or torch.Tensor
        Factor matrices of shape ``(R_i, I_i)`` (paper convention).

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import Tucker
    >>> t = Tucker(np.ones((2, 2)), [np.ones((2, 3)), np.ones((2, 5))])
    >>> t.shape, t.ranks, t.to_matrix(1).shape
    ((3, 5), (2, 2), (3, 5))
    """

    core: Any
    factors: list[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(I_1, ..., I_N)`` of the full tensor."""
        return tuple(int(f.shape[1]) for f in self.factors)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Multilinear ranks ``(R_1, ..., R_N)``."""
        return tuple(int(s) for s in self.core.shape)

    def to_tensor(self) -> Any:
        """Reconstruct the full tensor (see :func:`tucker_to_tensor`)."""
        return tucker_to_tensor(self.core, self.factors)

    def to_matrix(self, k: int) -> Any:
        """Reconstruct the [N;k] matricization in Kronecker form (see :func:`tucker_to_matrix`)."""
        return tucker_to_matrix(self.core, self.factors, k)


def _check_tucker(core: Array, factors: Sequence[Array]) -> list[Array]:
    check_array(core, "core")
    facs: list[Array] = check_matrices(factors, "factors")
    check_same_backend([core, *facs], ["core", *(f"factors[{i}]" for i in range(len(facs)))])
    if len(facs) != core.ndim:
        raise ShapeError(f"an order-{core.ndim} core needs {core.ndim} factors, got {len(facs)}")
    for i, f in enumerate(facs):
        if f.shape[0] != core.shape[i]:
            raise ShapeError(
                f"factors[{i}] has shape {tuple(f.shape)} but the core has R_{i + 1} = "
                f"{core.shape[i]}; factors are R_i x I_i (paper Eq. 4), so it needs "
                f"{core.shape[i]} rows (pass f.T for a TensorLy-style I_i x R_i factor)"
            )
    return facs


def tucker_to_tensor(core: Array, factors: Sequence[Array]) -> Array:
    r"""Full tensor :math:`\mathcal{G} \times_1 \mathbf{B}^{(1)} \cdots \times_N \mathbf{B}^{(N)}`.

    Evaluated as one planned contraction (cached per shapes).

    Parameters
    ----------
    core : numpy.ndarray or torch.Tensor
        Core of shape ``(R_1, ..., R_N)``.
    factors : sequence of numpy.ndarray or torch.Tensor
        ``N`` factors of shape ``(R_i, I_i)``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Tensor of shape ``(I_1, ..., I_N)``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import tucker_to_tensor
    >>> G = np.ones((2, 2, 2))
    >>> tucker_to_tensor(G, [np.ones((2, 4)), np.ones((2, 3)), np.ones((2, 5))]).shape
    (4, 3, 5)
    """
    facs = _check_tucker(core, factors)
    return multi_mode_product(core, facs)


def tucker_to_matrix(core: Array, factors: Sequence[Array], k: int) -> Array:
    r"""The [N;k] matricization of a Tucker tensor in Kronecker form (paper Eq. 15).

    Computes ``kron(B_1..B_k).T @ unfold(G, k) @ kron(B_{k+1}..B_N)`` by applying the small
    factors one mode at a time (:func:`tera.tn.kron_apply`), never forming a Kronecker
    product. Equal to ``unfold(tucker_to_tensor(core, factors), k)``.

    Parameters
    ----------
    core : numpy.ndarray or torch.Tensor
        Core of shape ``(R_1, ..., R_N)``.
    factors : sequence of numpy.ndarray or torch.Tensor
        ``N`` factors of shape ``(R_i, I_i)``.
    k : int
        Number of leading modes that index the rows, ``0 <= k <= N``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Matrix of shape ``(prod(I[:k]), prod(I[k:]))``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import tucker_to_matrix, tucker_to_tensor, unfold
    >>> rng = np.random.default_rng(0)
    >>> G = rng.standard_normal((2, 3, 2))
    >>> Bs = [rng.standard_normal((2, 4)), rng.standard_normal((3, 3)), rng.standard_normal((2, 5))]
    >>> np.allclose(tucker_to_matrix(G, Bs, 1), unfold(tucker_to_tensor(G, Bs), 1))
    True
    """
    facs = _check_tucker(core, factors)
    gk = unfold(core, k)
    left, right = facs[:k], facs[k:]
    if left:  # kron(B_left).T @ Gk == kron(B_i.T ...) @ Gk
        gk = kron_apply([f.T for f in left], gk)
    if right:  # X @ kron(B_right) == (kron(B_j.T ...) @ X.T).T
        gk = kron_apply([f.T for f in right], gk.T).T
    return gk

r"""Mode-n products, Kronecker and Khatri-Rao products, and matrix-free Kronecker application.

The mode-n product follows the paper's Eq. (3): for a tensor :math:`\mathcal{A}` with
:math:`I_n` entries along mode ``n`` and a matrix :math:`\mathbf{B}` of shape
:math:`I_n \times J_n`,

.. math:: (\mathcal{A} \times_n \mathbf{B})(\dots, j_n, \dots)
          = \sum_{i_n} \mathcal{A}(\dots, i_n, \dots)\, \mathbf{B}(i_n, j_n),

i.e. the matrix's *first* index is contracted. TensorLy and Kolda & Bader contract the
second index, so ``mode_product(T, M, n) == tensorly.tenalg.mode_dot(T, M.T, n)``.
With row-major vectorization,
``vec(T x_1 M_1 ... x_N M_N) == kron(M_1, ..., M_N).T @ vec(T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import opt_einsum

from tera.errors import ShapeError
from tera.tn._backend import Array, check_array, check_same_backend, kron2, moveaxis, tensordot
from tera.tn.contract import contract, promote
from tera.tn.folding import check_mode

__all__ = ["khatri_rao", "kron", "kron_apply", "mode_product", "multi_mode_product"]

_CONVENTION = (
    "the paper's convention (Eq. 3) contracts the matrix's first index, so it must be "
    "I_n x J_n; pass matrix.T if you hold a J_n x I_n matrix (TensorLy/Kolda convention)"
)


def check_matrices(matrices: Sequence[Array], name: str) -> list[Array]:
    """Validate a non-empty sequence of 2-d arrays of one backend and return it as a list."""
    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, Sequence):
        check_array(matrices, name)
        raise ShapeError(
            f"{name} must be a list of matrices, got a single array of shape "
            f"{tuple(matrices.shape)}; wrap it in a list: [{name[:-1]}]"
        )
    mats = list(matrices)
    if not mats:
        raise ShapeError(f"{name} is empty; pass at least one matrix")
    check_same_backend(mats, [f"{name}[{i}]" for i in range(len(mats))])
    for i, m in enumerate(mats):
        if m.ndim != 2:
            raise ShapeError(f"{name}[{i}] must be a matrix (2-d), got shape {tuple(m.shape)}")
    return mats


def mode_product(tensor: Array, matrix: Array, n: int) -> Array:
    r"""Mode-n product :math:`\mathcal{A} \times_n \mathbf{B}` of the paper's Eq. (3).

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Tensor of shape ``(I_1, ..., I_N)``.
    matrix : numpy.ndarray or torch.Tensor
        Matrix of shape ``(I_n, J_n)``; its first index is contracted with mode ``n``.
    n : int
        The mode (0-based; negative counts from the end).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Tensor of shape ``(I_1, ..., J_n, ..., I_N)``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import mode_product
    >>> T, B = np.ones((2, 3, 4)), np.ones((3, 5))
    >>> mode_product(T, B, 1).shape
    (2, 5, 4)
    """
    check_same_backend([tensor, matrix], ["tensor", "matrix"])
    n = check_mode(n, tensor.ndim)
    if matrix.ndim != 2:
        raise ShapeError(f"matrix must be 2-d (I_n x J_n), got shape {tuple(matrix.shape)}")
    if matrix.shape[0] != tensor.shape[n]:
        raise ShapeError(
            f"matrix of shape {tuple(matrix.shape)} does not fit mode {n} of a tensor of "
            f"shape {tuple(tensor.shape)}: it needs {tensor.shape[n]} rows; {_CONVENTION}"
        )
    tensor, matrix = promote([tensor, matrix])
    return moveaxis(tensordot(tensor, matrix, ([n], [0])), -1, n)


def multi_mode_product(
    tensor: Array, matrices: Sequence[Array], modes: Sequence[int] | None = None
) -> Array:
    r"""Apply several mode products: :math:`\mathcal{A} \times_{m_1} \mathbf{B}_1 \cdots`.

    With distinct modes the products commute and are evaluated as one planned contraction
    (cached per shapes, see :func:`tera.tn.plan`); repeated modes are applied in the order
    given (consecutive products on one mode compose: ``x_n B x_n C == x_n (B @ C)``).

    Parameters
    ----------
    tensor : numpy.ndarray or torch.Tensor
        Tensor of order ``N``.
    matrices : sequence of numpy.ndarray or torch.Tensor
        Matrices ``B_j`` of shape ``(I_{m_j}, J_{m_j})`` (paper convention).
    modes : sequence of int, optional
        The mode of each matrix; defaults to ``0, 1, ..., len(matrices) - 1``. An empty
        list of matrices returns ``tensor`` unchanged.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The product tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import multi_mode_product
    >>> T = np.ones((2, 3, 4))
    >>> multi_mode_product(T, [np.ones((2, 6)), np.ones((4, 1))], modes=[0, 2]).shape
    (6, 3, 1)
    """
    check_array(tensor, "tensor")
    if isinstance(matrices, Sequence) and len(matrices) == 0:
        return tensor  # no products: the identity
    mats: list[Array] = check_matrices(matrices, "matrices")
    check_same_backend([tensor, *mats], ["tensor", *(f"matrices[{i}]" for i in range(len(mats)))])
    if modes is None:
        if len(mats) > tensor.ndim:
            raise ShapeError(
                f"{len(mats)} matrices given for an order-{tensor.ndim} tensor; pass at most "
                f"{tensor.ndim} or name their modes with modes=[...]"
            )
        mode_list = list(range(len(mats)))
    else:
        if isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence):
            raise ShapeError(
                f"modes must be a sequence of ints, one per matrix, got {modes!r}; "
                f"e.g. modes=[{modes!r}] for a single matrix"
            )
        mode_list = [check_mode(m, tensor.ndim) for m in modes]
        if len(mode_list) != len(mats):
            raise ShapeError(
                f"{len(mats)} matrices but {len(mode_list)} modes; give one mode per matrix"
            )
    if len(set(mode_list)) != len(mode_list):
        out = tensor
        for m, mode in zip(mats, mode_list, strict=True):
            out = mode_product(out, m, mode)
        return out
    for j, (m, mode) in enumerate(zip(mats, mode_list, strict=True)):
        if m.shape[0] != tensor.shape[mode]:
            raise ShapeError(
                f"matrices[{j}] of shape {tuple(m.shape)} does not fit mode {mode} of a "
                f"tensor of shape {tuple(tensor.shape)}: it needs {tensor.shape[mode]} rows; "
                f"{_CONVENTION}"
            )
    order = tensor.ndim
    in_syms = [opt_einsum.get_symbol(i) for i in range(order)]
    out_syms = list(in_syms)
    terms = ["".join(in_syms)]
    for j, mode in enumerate(mode_list):
        new = opt_einsum.get_symbol(order + j)
        terms.append(in_syms[mode] + new)
        out_syms[mode] = new
    equation = ",".join(terms) + "->" + "".join(out_syms)
    return contract(equation, tensor, *mats)


def kron(matrices: Sequence[Array]) -> Array:
    r"""Kronecker product :math:`\mathbf{M}_1 \otimes \cdots \otimes \mathbf{M}_K`.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import kron
    >>> kron([np.eye(2), np.ones((1, 3))]).shape
    (2, 6)
    """
    mats: list[Array] = check_matrices(matrices, "matrices")
    out = mats[0]
    for m in mats[1:]:
        out = kron2(out, m)
    return out


def kron_apply(matrices: Sequence[Array], x: Array) -> Array:
    r"""Compute ``kron(matrices) @ x`` without forming the Kronecker product.

    ``x`` is reshaped to ``(c_1, ..., c_K, batch)`` and each small matrix is applied to its
    own mode in turn, which costs ``sum_i r_i c_i * (size of the rest)`` operations, i.e.
    ``prod(I) * sum(I)`` for square factors instead of the ``prod(I)**2`` of the dense form.

    Parameters
    ----------
    matrices : sequence of numpy.ndarray or torch.Tensor
        Factors ``M_i`` of shape ``(r_i, c_i)``.
    x : numpy.ndarray or torch.Tensor
        Vector of length ``prod(c_i)`` or array of shape ``(prod(c_i), *batch)``.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Array of shape ``(prod(r_i), *batch)``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import kron, kron_apply
    >>> rng = np.random.default_rng(0)
    >>> Ms = [rng.standard_normal((3, 2)), rng.standard_normal((4, 5))]
    >>> x = rng.standard_normal((10, 7))
    >>> np.allclose(kron_apply(Ms, x), kron(Ms) @ x)
    True
    """
    mats: list[Array] = check_matrices(matrices, "matrices")
    check_same_backend([*mats, x], [*(f"matrices[{i}]" for i in range(len(mats))), "x"])
    rows = [int(m.shape[0]) for m in mats]
    cols = [int(m.shape[1]) for m in mats]
    n_in, n_out = math.prod(cols), math.prod(rows)
    if x.ndim == 0 or x.shape[0] != n_in:
        raise ShapeError(
            f"x of shape {tuple(x.shape)} does not fit kron of factors with column sizes "
            f"{cols}: its first dimension must be prod = {n_in}"
        )
    promoted: list[Array] = promote([*mats, x])
    mats, x = promoted[:-1], promoted[-1]
    batch_shape = tuple(x.shape[1:])
    batch = math.prod(batch_shape)
    if n_in * batch == 0 or n_out == 0:
        return cast(Array, (kron(mats) @ x.reshape(n_in, batch)).reshape(n_out, *batch_shape))
    # t holds the modes (c_i .. c_K, batch, r_1 .. r_{i-1}) flattened; each step contracts the
    # leading mode with M_i and rotates the new r_i mode to the back.
    t = x.reshape(n_in, batch)
    size = n_in * batch
    for m, r, c in zip(mats, rows, cols, strict=True):
        t = (m @ t.reshape(c, size // c)).T
        size = size // c * r
    return cast(Array, t.reshape(batch, n_out).T.reshape(n_out, *batch_shape))


def khatri_rao(matrices: Sequence[Array]) -> Array:
    r"""Column-wise Kronecker product :math:`\mathbf{M}_1 \odot \cdots \odot \mathbf{M}_K`.

    All matrices must have the same number of columns ``R``; column ``r`` of the result is
    ``kron(M_1[:, r], ..., M_K[:, r])``, so the result is ``(prod I_i) x R``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.tn import khatri_rao, kron
    >>> A, B = np.arange(6.).reshape(2, 3), np.arange(12.).reshape(4, 3)
    >>> KR = khatri_rao([A, B])
    >>> KR.shape, bool((KR[:, 1] == kron([A[:, 1:2], B[:, 1:2]])[:, 0]).all())
    ((8, 3), True)
    """
    mats: list[Array] = check_matrices(matrices, "matrices")
    n_cols = {int(m.shape[1]) for m in mats}
    if len(n_cols) != 1:
        raise ShapeError(
            "khatri_rao needs matrices with equal column counts, got shapes "
            f"{[tuple(m.shape) for m in mats]}"
        )
    out = mats[0]
    for m in mats[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(out.shape[0] * m.shape[0], m.shape[1])
    return out

r"""Hand-ordered contraction orders for Tucker-structured weight updates: algebra only.

:func:`scaled_tucker_matrix` evaluates the matricized Tucker network of TeRA (paper Eq. 5),

.. math:: \mathbf{M} = \big(\mathcal{G} \times_1 \operatorname{diag}(\mathbf{d}_1)\mathbf{A}_1
          \times_2 \cdots \times_N \operatorname{diag}(\mathbf{d}_N)\mathbf{A}_N\big)_{[N;k]},

faster and leaner than a generic einsum:

* the vectors are folded into their (small) factors, ``B_n = diag(d_n) A_n``, so the core is
  never rescaled as a whole;
* each mode product is one GEMM on a reshaped view (``(P, R_n) @ B_n`` for the last mode,
  ``B_n^T @ (R_n, Q)`` for the first, a batched GEMM otherwise): no permute copies;
* runs of small modes are merged into one mode through their Kronecker product, so the
  memory-bound passes over the ``prod(I)``-sized tensor are few.

FLOPs for modes ``I`` and ranks ``R``: the forward costs
``2 * sum_n prod(I_{<=n}) R_n prod(R_{>n})`` (for ``R = I``: ``2 * prod(I) * sum(I)``).

This module is stateless algebra (plain autograd, no caches, no device or precision
state). TeRA's adapter evaluates the same contraction order through
:mod:`tera.adapters.tera_kernel`, which adds a memory-lean backward, a cache of what it
derives from the frozen factors and the TF32 policy of its forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np
import torch

from tera.errors import ShapeError
from tera.tn._backend import Array, check_same_backend, is_floating
from tera.tn.products import check_matrices

__all__ = [
    "apply_mode_groups",
    "apply_scaled_factors",
    "check_scaled_tucker",
    "kron_matrices",
    "merge_small_modes",
    "scaled_tucker_flops",
    "scaled_tucker_matrix",
    "scaled_tucker_push",
    "scaled_tucker_push_flops",
]

MERGE_LIMIT = 64
"""Runs of consecutive modes are merged while the product of their sizes stays <= this."""


def merge_small_modes(sizes: Sequence[int], limit: int = MERGE_LIMIT) -> list[list[int]]:
    """Group consecutive mode indices whose sizes multiply to at most ``limit``.

    Each group is then applied as one mode through the Kronecker product of its factors:
    a few GEMMs of width ``<= limit`` instead of one memory-bound pass per tiny mode.
    Groups are filled from the last mode backwards, so the widest group is the last one,
    which is applied as a plain GEMM (the others need a batched one).

    Examples
    --------
    >>> from tera.tn.kernels import merge_small_modes
    >>> merge_small_modes([1024, 4, 4, 4, 4, 4])
    [[0], [1, 2], [3, 4, 5]]
    >>> merge_small_modes([32, 32, 32, 32])
    [[0], [1], [2], [3]]
    """
    groups: list[list[int]] = []
    size = 0
    for n in reversed(range(len(sizes))):
        s = sizes[n]
        if groups and size * s <= limit:
            groups[0].insert(0, n)
            size *= s
        else:
            groups.insert(0, [n])
            size = s
    return groups


def kron_matrices(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``kron(mats[0], mats[1], ...)`` of torch matrices, by broadcasting.

    Examples
    --------
    >>> import torch
    >>> from tera.tn.kernels import kron_matrices
    >>> a, b = torch.randn(2, 3), torch.randn(4, 5)
    >>> bool(torch.equal(kron_matrices([a, b]), torch.kron(a, b)))
    True
    """
    out = mats[0]
    for m in mats[1:]:  # broadcasting, not torch.kron: that rejects some transposed views
        (a, b), (c, d) = out.shape, m.shape
        out = (out[:, None, :, None] * m[None, :, None, :]).reshape(a * c, b * d)
    return out


def apply_mode_groups(
    t: torch.Tensor,
    dims: list[int],
    mats: Sequence[torch.Tensor],
    groups: list[list[int]],
    lead: int = 1,
    merged: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Contract each group of modes of ``t`` (shape ``(lead, *dims)``) with its Kronecker product.

    ``mats[n]`` maps size ``dims[n]`` to ``mats[n].shape[1]``; ``lead`` rows (tokens) are
    carried along untouched. ``merged`` gives the groups' Kronecker products ready-made.

    Examples
    --------
    >>> import torch
    >>> from tera.tn.kernels import apply_mode_groups
    >>> t, m = torch.randn(3, 4), torch.randn(4, 2)
    >>> bool(torch.allclose(apply_mode_groups(t, [3, 4], [torch.eye(3), m], [[0], [1]]), t @ m))
    True
    """
    sizes = [math.prod(dims[n] for n in g) for g in groups]
    for j, g in enumerate(groups):
        if merged is not None:
            m = merged[j]
        else:
            m = kron_matrices([mats[n] for n in g]) if len(g) > 1 else mats[g[0]]
        p, r, q = lead * math.prod(sizes[:j]), sizes[j], math.prod(sizes[j + 1 :])
        if q == 1:
            t = t.reshape(p, r) @ m
        elif p == 1:
            t = m.T @ t.reshape(r, q)
        else:
            t = torch.matmul(m.T, t.reshape(p, r, q))
        sizes[j] = int(m.shape[1])
    return t


def apply_scaled_factors(
    core: torch.Tensor, vectors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``G x_1 diag(d_1) A_1 ... x_N diag(d_N) A_N``, flat in row-major order (no checks).

    Examples
    --------
    >>> import torch
    >>> from tera.tn.kernels import apply_scaled_factors
    >>> G, A = torch.randn(2, 3), [torch.randn(2, 2), torch.randn(3, 3)]
    >>> out = apply_scaled_factors(G, [torch.ones(2), torch.ones(3)], A)
    >>> bool(torch.allclose(out.reshape(2, 3), A[0].T @ G @ A[1]))
    True
    """
    scaled = [v[:, None] * a for v, a in zip(vectors, factors, strict=True)]
    ranks = [int(a.shape[0]) for a in factors]
    groups = merge_small_modes([int(a.shape[1]) for a in factors])
    return apply_mode_groups(core, ranks, scaled, groups)


def check_scaled_tucker(
    core: Array, vectors: Sequence[Array], factors: Sequence[Array], k: int
) -> None:
    """Raise :class:`~tera.errors.ShapeError` unless the operands form a scaled Tucker network.

    Examples
    --------
    >>> import torch
    >>> from tera.tn.kernels import check_scaled_tucker
    >>> check_scaled_tucker(torch.ones(2, 3), [torch.ones(2), torch.ones(3)],
    ...                     [torch.ones(2, 4), torch.ones(3, 5)], k=1)
    """
    facs: list[Array] = check_matrices(factors, "factors")
    check_same_backend(
        [core, *vectors, *facs],
        [
            "core",
            *(f"vectors[{i}]" for i in range(len(vectors))),
            *(f"factors[{i}]" for i in range(len(facs))),
        ],
    )
    if core.ndim != len(facs) or len(vectors) != len(facs):
        raise ShapeError(
            f"a core of order {core.ndim} needs one factor and one vector per mode, got "
            f"{len(facs)} factors and {len(vectors)} vectors"
        )
    for i, (r, v, a) in enumerate(zip(core.shape, vectors, facs, strict=True)):
        if v.ndim != 1 or v.shape[0] != r or a.shape[0] != r:
            raise ShapeError(
                f"mode {i}: core size {r} needs vectors[{i}] of shape ({r},) and factors[{i}] "
                f"of shape ({r}, I_{i}); got {tuple(v.shape)} and {tuple(a.shape)}"
            )
    if not 0 <= k <= core.ndim:
        raise ShapeError(
            f"k={k} is out of range for an order-{core.ndim} network; use 0..{core.ndim}"
        )
    if not is_floating(core):
        raise ShapeError(f"core must be floating point, got {core.dtype}")


def scaled_tucker_matrix(
    core: Array,
    vectors: Sequence[Array],
    factors: Sequence[Array],
    k: int,
    scale: float = 1.0,
    transpose: bool = False,
) -> Array:
    r"""``unfold_[N;k](G x_1 diag(d_1) A_1 ... x_N diag(d_N) A_N) * scale``, fast and lean.

    Parameters
    ----------
    core : numpy.ndarray or torch.Tensor
        Core ``G`` of shape ``(R_1, ..., R_N)``.
    vectors : sequence of numpy.ndarray or torch.Tensor
        ``d_n`` of shape ``(R_n,)``.
    factors : sequence of numpy.ndarray or torch.Tensor
        ``A_n`` of shape ``(R_n, I_n)`` (the paper's orientation).
    k : int
        Number of leading modes that index the rows.
    scale : float
        A scalar applied to the result.
    transpose : bool
        Return the transpose (a view), e.g. torch's ``out x in`` weight orientation when
        the first ``k`` modes index the input; its backward then needs no transposing copy.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        The ``prod(I[:k]) x prod(I[k:])`` matrix (or its transpose), under plain autograd
        for torch inputs (which stores its intermediates; the adapters' version,
        :func:`tera.adapters.tera_kernel.lean_tucker_matrix`, has a backward that keeps
        nothing of the size of the result).

    Examples
    --------
    >>> import torch
    >>> from tera.tn import tucker_to_matrix
    >>> from tera.tn.kernels import scaled_tucker_matrix
    >>> f64 = {"dtype": torch.float64}
    >>> G = torch.randn(4, 2, 3, **f64)
    >>> A = [torch.randn(4, 4, **f64), torch.randn(2, 2, **f64), torch.randn(3, 3, **f64)]
    >>> d = [torch.rand(4, **f64), torch.rand(2, **f64), torch.rand(3, **f64)]
    >>> M = scaled_tucker_matrix(G, d, A, k=1)
    >>> ref = tucker_to_matrix(G, [v[:, None] * a for v, a in zip(d, A)], k=1)
    >>> M.shape, bool(torch.allclose(M, ref))
    (torch.Size([4, 6]), True)
    """
    check_scaled_tucker(core, vectors, factors, k)
    if isinstance(core, np.ndarray):
        out = scaled_tucker_matrix(
            torch.from_numpy(core),
            [torch.from_numpy(np.asarray(v)) for v in vectors],
            [torch.from_numpy(np.asarray(a)) for a in factors],
            k,
            scale,
            transpose,
        )
        return cast(Array, out.numpy())
    rows = math.prod(int(a.shape[1]) for a in factors[:k])
    m = apply_scaled_factors(core, list(vectors), list(factors)).reshape(rows, -1)
    m = m.T if transpose else m
    return cast(Array, m * scale if scale != 1.0 else m)


def scaled_tucker_push(
    x: torch.Tensor,
    core: torch.Tensor,
    vectors: Sequence[torch.Tensor],
    factors: Sequence[torch.Tensor],
    k: int,
) -> torch.Tensor:
    r"""``x @ M`` for the matrix ``M`` of :func:`scaled_tucker_matrix`, without forming ``M``.

    ``x`` has shape ``(..., prod(I[:k]))``; the result ``(..., prod(I[k:]))``. The rows of
    ``x`` go through the input modes' factors (``B_n = diag(d_n) A_n``, small modes merged
    as in :func:`scaled_tucker_matrix`), the core as one ``prod(R[:k]) x prod(R[k:])`` GEMM,
    and the output modes' factors: a handful of GEMMs whose cost grows with the number of
    rows, never with ``prod(I)``. Cheaper than materializing ``M`` for few rows
    (generation, small batches); autograd keeps intermediates of ``rows x prod(R)`` size.

    Examples
    --------
    >>> import torch
    >>> from tera.tn.kernels import scaled_tucker_matrix, scaled_tucker_push
    >>> f64 = {"dtype": torch.float64}
    >>> G = torch.randn(4, 2, 3, **f64)
    >>> A = [torch.randn(4, 4, **f64), torch.randn(2, 2, **f64), torch.randn(3, 3, **f64)]
    >>> d = [torch.rand(4, **f64), torch.rand(2, **f64), torch.rand(3, **f64)]
    >>> x = torch.randn(5, 4, **f64)
    >>> y = scaled_tucker_push(x, G, d, A, k=1)
    >>> y.shape, bool(torch.allclose(y, x @ scaled_tucker_matrix(G, d, A, k=1)))
    (torch.Size([5, 6]), True)
    """
    check_scaled_tucker(core, vectors, factors, k)
    scaled = [v[:, None] * a for v, a in zip(vectors, factors, strict=True)]
    ranks = [int(a.shape[0]) for a in factors]
    modes = [int(a.shape[1]) for a in factors]
    n_in = math.prod(modes[:k])
    if x.shape[-1:] != (n_in,):
        raise ShapeError(
            f"x of shape {tuple(x.shape)} does not fit: its last dimension must be "
            f"prod(I[:k]) = {n_in}"
        )
    lead = tuple(x.shape[:-1])
    rows = math.prod(lead)
    h = apply_mode_groups(
        x.reshape(rows, n_in),
        modes[:k],
        [b.T for b in scaled[:k]],
        merge_small_modes(modes[:k]),
        lead=rows,
    )
    h = h.reshape(rows, -1) @ core.reshape(math.prod(ranks[:k]), -1)
    h = apply_mode_groups(h, ranks[k:], scaled[k:], merge_small_modes(modes[k:]), lead=rows)
    return h.reshape(*lead, math.prod(modes[k:]))


def scaled_tucker_push_flops(
    ranks: Sequence[int], modes: Sequence[int], k: int, rows: int, backward: bool = False
) -> int:
    """FLOPs of :func:`scaled_tucker_push` on ``rows`` rows (forward, or its backward).

    The backward pays the input gradient (as much as the forward) and, for the ``d``
    gradients, the factors' weight gradients (as much as the factor products again).

    Examples
    --------
    >>> from tera.tn.kernels import scaled_tucker_push_flops
    >>> scaled_tucker_push_flops((8, 4), (8, 4), k=1, rows=10) == 2 * 10 * (8 * 8 + 8 * 4 + 4 * 4)
    True
    """

    def side(dims: list[int], outs: list[int], groups: list[list[int]]) -> int:
        flops, sizes = 0, list(dims)
        for g in groups:
            a = math.prod(sizes[n] for n in g)
            b = math.prod(outs[n] for n in g)
            flops += 2 * rows * math.prod(sizes) // a * a * b
            for n in g:
                sizes[n] = outs[n]
        return flops

    ins, outs = list(modes[:k]), list(modes[k:])
    factor_flops = side(ins, list(ranks[:k]), merge_small_modes(ins)) + side(
        list(ranks[k:]), outs, merge_small_modes(outs)
    )
    core_flops = 2 * rows * math.prod(ranks)
    if backward:
        return 2 * factor_flops + core_flops
    return factor_flops + core_flops


def scaled_tucker_flops(ranks: Sequence[int], modes: Sequence[int], backward: bool = False) -> int:
    """Multiply-add FLOPs (x2) of :func:`scaled_tucker_matrix`'s forward, or of the lean backward.

    The backward counted is that of :func:`tera.adapters.tera_kernel.lean_tucker_matrix`
    (one pass back through the factors, then the ``grad d`` reductions).

    Examples
    --------
    >>> from tera.tn.kernels import scaled_tucker_flops
    >>> scaled_tucker_flops((1024, 4, 4), (1024, 4, 4)) == 2 * 1024 * 16 * (1024 + 16)
    True
    """
    groups = merge_small_modes(list(modes))
    dims = list(ranks)
    flops = 0
    for g in groups:
        r = math.prod(ranks[n] for n in g)
        i = math.prod(modes[n] for n in g)
        rest = math.prod(dims) // r
        flops += 2 * rest * r * i
        for n in g:
            dims[n] = modes[n]
    if backward:
        flops += (len(ranks) + 1) * math.prod(ranks)
    return flops

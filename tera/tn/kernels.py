r"""Hand-ordered torch kernels for the hot paths of Tucker-structured weight updates.

:func:`scaled_tucker_matrix` evaluates the matricized Tucker network of TeRA (paper Eq. 5),

.. math:: \mathbf{M} = \big(\mathcal{G} \times_1 \operatorname{diag}(\mathbf{d}_1)\mathbf{A}_1
          \times_2 \cdots \times_N \operatorname{diag}(\mathbf{d}_N)\mathbf{A}_N\big)_{[N;k]},

faster and leaner than a generic einsum:

* the vectors are folded into their (small) factors, ``B_n = diag(d_n) A_n``, so the core is
  never rescaled as a whole;
* each mode product is one GEMM on a reshaped view (``(P, R_n) @ B_n`` for the last mode,
  ``B_n^T @ (R_n, Q)`` for the first, a batched GEMM otherwise): no permute copies;
* runs of small modes are merged into one mode through their Kronecker product, so the
  memory-bound passes over the ``prod(I)``-sized tensor are few;
* its backward (a :class:`torch.autograd.Function`) stores nothing of size ``prod(I)``: it
  maps the incoming gradient back through the factors once,
  ``grad_C = grad_M x_n A_n^T`` (one pass of the same cost as the forward), and reads each
  ``grad d_n`` off ``grad_C * G`` with one matrix-vector product per mode. Peak extra memory
  is two tensors of size ``prod(I)`` whatever the order ``N``.

FLOPs for modes ``I`` and ranks ``R``: forward and backward each cost
``2 * sum_n prod(I_{<=n}) R_n prod(R_{>n})`` (for ``R = I``: ``2 * prod(I) * sum(I)``), the
``grad d`` step ``N * prod(R)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch

from tera.errors import ShapeError
from tera.tn._backend import Array, check_same_backend, is_floating
from tera.tn.products import check_matrices

__all__ = [
    "cuda_tf32",
    "cuda_tf32_enabled",
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


def _precision() -> str | bool:
    """The fp32 matmul precision of CUDA, read through the API this torch has.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("none", "ieee" or
    "tf32"); once it has been set, reading the legacy ``allow_tf32`` raises, so the new API
    is used whenever it exists (it reflects legacy settings too).
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return cast(str, matmul.fp32_precision)
    return bool(matmul.allow_tf32)  # pragma: no cover - torch < 2.9


def _set_precision(state: str | bool) -> None:
    matmul = torch.backends.cuda.matmul
    if isinstance(state, str):
        matmul.fp32_precision = state
    else:  # pragma: no cover - torch < 2.9
        matmul.allow_tf32 = state


def cuda_tf32_enabled() -> bool:
    """Whether float32 CUDA matmuls may use TF32 tensor cores right now.

    Examples
    --------
    >>> from tera.tn.kernels import cuda_tf32, cuda_tf32_enabled
    >>> with cuda_tf32(True):
    ...     cuda_tf32_enabled()
    True
    """
    state = _precision()
    return state == "tf32" if isinstance(state, str) else state


@contextlib.contextmanager
def _precision_set_to(state: str | bool) -> Iterator[None]:
    old = _precision()
    if old == state:
        yield
        return
    _set_precision(state)
    try:
        yield
    finally:
        _set_precision(old)


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 tensor cores for float32 CUDA matmuls inside the block.

    Sets the process-wide fp32 matmul precision of CUDA (``fp32_precision``, or the legacy
    ``allow_tf32`` on torch < 2.9) and restores it on exit. TF32 keeps float32's range with
    a 10-bit mantissa, enough for a ``dW`` that is rounded to bfloat16 (8 bits) or float16
    (10 bits) before use; the backward of :func:`scaled_tucker_matrix` runs with the setting
    that was in force at its forward.

    Examples
    --------
    >>> from tera.tn.kernels import cuda_tf32, cuda_tf32_enabled
    >>> before = cuda_tf32_enabled()
    >>> with cuda_tf32(True):
    ...     cuda_tf32_enabled()
    True
    >>> cuda_tf32_enabled() == before
    True
    """
    new_api = isinstance(_precision(), str)
    target: str | bool = ("tf32" if enabled else "ieee") if new_api else enabled
    with _precision_set_to(target):
        yield


def _kron(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:  # broadcasting, not torch.kron: that rejects some transposed views
        (a, b), (c, d) = out.shape, m.shape
        out = (out[:, None, :, None] * m[None, :, None, :]).reshape(a * c, b * d)
    return out


def _apply_modes(
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
    """
    sizes = [math.prod(dims[n] for n in g) for g in groups]
    for j, g in enumerate(groups):
        if merged is not None:
            m = merged[j]
        else:
            m = _kron([mats[n] for n in g]) if len(g) > 1 else mats[g[0]]
        p, r, q = lead * math.prod(sizes[:j]), sizes[j], math.prod(sizes[j + 1 :])
        if q == 1:
            t = t.reshape(p, r) @ m
        elif p == 1:
            t = m.T @ t.reshape(r, q)
        else:
            t = torch.matmul(m.T, t.reshape(p, r, q))
        sizes[j] = int(m.shape[1])
    return t


def _materialize(
    core: torch.Tensor, vectors: Sequence[torch.Tensor], factors: Sequence[torch.Tensor]
) -> torch.Tensor:
    scaled = [v[:, None] * a for v, a in zip(vectors, factors, strict=True)]
    ranks = [int(a.shape[0]) for a in factors]
    groups = merge_small_modes([int(a.shape[1]) for a in factors])
    return _apply_modes(core, ranks, scaled, groups)


def _contract_vectors(h: torch.Tensor, vectors: Sequence[torch.Tensor], left: bool) -> torch.Tensor:
    """Contract the leading (``left``) or trailing modes of flat ``h`` with ``vectors``."""
    outer = vectors[0]
    for v in vectors[1:]:  # the flat outer product, row-major like the modes of h
        outer = (outer[:, None] * v[None, :]).reshape(-1)
    return outer @ h.reshape(outer.shape[0], -1) if left else h.reshape(-1, outer.shape[0]) @ outer


def _all_but_one(h: torch.Tensor, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[sum_{r without r_n} h(r) prod_{m != n} v_m(r_m) for n]`` by halving.

    Split the modes where the sizes balance, contract each half's vectors away from the
    other half (two GEMV passes over ``h``) and recurse on the much smaller remainders.
    """
    if len(vectors) == 1:
        return [h.reshape(-1)]
    sizes = [int(v.shape[0]) for v in vectors]
    total = math.prod(sizes)
    split, prefix = 1, sizes[0]
    while split < len(sizes) - 1 and prefix * sizes[split] <= math.isqrt(total):
        prefix *= sizes[split]
        split += 1
    head, tail = vectors[:split], vectors[split:]
    return _all_but_one(_contract_vectors(h, tail, left=False), head) + _all_but_one(
        _contract_vectors(h, head, left=True), tail
    )


_Entry = tuple[tuple["weakref.ref[torch.Tensor]", ...], tuple[int, ...], torch.Tensor]
_DERIVED: dict[tuple[object, ...], _Entry] = {}
_DERIVED_MAX = 64


def _derived(
    sources: Sequence[torch.Tensor], tag: tuple[object, ...], build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``build()``, cached while every tensor of ``sources`` lives unchanged.

    For what the kernel derives from frozen shared factors on every call (the core permuted
    to torch's ``out x in`` order, Kronecker products of factor groups). An entry is checked
    against the tensors themselves (weak references) and their version counters, so a freed
    or modified factor is never answered from the cache; tensors that require grad are not
    cached.
    """
    if any(t.requires_grad for t in sources):
        return build()
    key = (tag, *((t.data_ptr(), t.device, t.dtype, tuple(t.shape)) for t in sources))
    versions = tuple(t._version for t in sources)
    hit = _DERIVED.get(key)
    if (
        hit is not None
        and hit[1] == versions
        and all(ref() is t for ref, t in zip(hit[0], sources, strict=True))
    ):
        return hit[2]
    value = build()
    if len(_DERIVED) >= _DERIVED_MAX:
        _DERIVED.clear()
    _DERIVED[key] = (tuple(weakref.ref(t) for t in sources), versions, value)
    return value


def _permuted(core: torch.Tensor, order: list[int]) -> torch.Tensor:
    """``core.permute(order)``, contiguous, cached while ``core`` lives unchanged."""
    if order == sorted(order):
        return core
    return _derived([core], ("permute", *order), lambda: core.permute(order).contiguous())


def _kron_t(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    return _kron([a.T for a in mats])


def _transposed_krons(
    factors: Sequence[torch.Tensor], order: list[int], groups: list[list[int]]
) -> list[torch.Tensor]:
    """Per group of (reordered) modes: the Kronecker product of the factors' transposes."""
    merged = []
    for g in groups:
        mats = [factors[order[n]] for n in g]
        if len(g) == 1:
            merged.append(mats[0].T)
        else:
            merged.append(_derived(mats, ("kron-T",), functools.partial(_kron_t, mats)))
    return merged


class _ScaledTucker(torch.autograd.Function):
    """Lean autograd for ``M = unfold(G x_n diag(d_n) A_n)``: gradients for the ``d`` only.

    With ``transpose`` the output is ``M.T``, computed contiguous from the core permuted
    with the column modes first (cached), and its gradient, contiguous in that layout, is
    mapped back in the same order: no transposing copy and no strided pass either way.
    """

    @staticmethod
    def forward(
        ctx: Any, core: torch.Tensor, k: int, transpose: bool, *tensors: torch.Tensor
    ) -> torch.Tensor:
        n = core.ndim
        vectors, factors = tensors[:n], tensors[n:]
        ctx.save_for_backward(core, *tensors)
        ctx.k, ctx.transpose = k, transpose
        ctx.precision = _precision()  # the backward runs with the same
        if transpose:
            order = list(range(k, n)) + list(range(k))
            ctx.permuted_core = _permuted(core, order)
            cols = math.prod(int(a.shape[1]) for a in factors[k:])
            m = _materialize(
                ctx.permuted_core, [vectors[i] for i in order], [factors[i] for i in order]
            )
            return m.reshape(cols, -1)
        rows = math.prod(int(a.shape[1]) for a in factors[:k])
        return _materialize(core, vectors, factors).reshape(rows, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with _precision_set_to(ctx.precision):
            return _ScaledTucker._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        core, *tensors = ctx.saved_tensors
        n = core.ndim
        vectors, factors = tensors[:n], tensors[n:]
        order = list(range(n))
        if ctx.transpose:
            if grad.is_contiguous():  # the tensor with the column modes first
                order = order[ctx.k :] + order[: ctx.k]
            else:
                grad = grad.T
        modes = [int(factors[i].shape[1]) for i in order]
        groups = merge_small_modes(modes)
        back = _transposed_krons(factors, order, groups)  # frozen: built once, cached
        grad_core = _apply_modes(grad.contiguous(), modes, [], groups, merged=back)
        ranks = [int(core.shape[i]) for i in order]
        permuted_core = ctx.permuted_core if order != list(range(n)) else core
        h = grad_core.reshape(ranks).mul_(permuted_core)
        permuted = _all_but_one(h, [vectors[i] for i in order])
        grads: list[torch.Tensor | None] = [None] * n
        for i, g in zip(order, permuted, strict=True):
            grads[i] = g if ctx.needs_input_grad[3 + i] else None
        return (None, None, None, *grads, *(None,) * n)


def _check(core: Array, vectors: Sequence[Array], factors: Sequence[Array], k: int) -> None:
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
        The ``prod(I[:k]) x prod(I[k:])`` matrix (or its transpose). For torch inputs the
        gradient reaches the vectors through a memory-lean backward; if the core or a
        factor requires grad, the same contraction order runs under plain autograd
        instead (which stores its intermediates).

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
    _check(core, vectors, factors, k)
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
    vecs = list(vectors)
    facs = list(factors)
    rows = math.prod(int(a.shape[1]) for a in facs[:k])
    if core.requires_grad or any(a.requires_grad for a in facs):
        m = _materialize(core, vecs, facs).reshape(rows, -1)
        m = m.T if transpose else m
    else:
        m = cast(torch.Tensor, _ScaledTucker.apply(core, k, transpose, *vecs, *facs))  # type: ignore[no-untyped-call]
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
    _check(core, vectors, factors, k)
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
    h = _apply_modes(
        x.reshape(rows, n_in),
        modes[:k],
        [b.T for b in scaled[:k]],
        merge_small_modes(modes[:k]),
        lead=rows,
    )
    h = h.reshape(rows, -1) @ core.reshape(math.prod(ranks[:k]), -1)
    h = _apply_modes(h, ranks[k:], scaled[k:], merge_small_modes(modes[k:]), lead=rows)
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
    """Multiply-add FLOPs (x2) of :func:`scaled_tucker_matrix`'s forward or backward.

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

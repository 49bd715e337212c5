r"""TeRA's evaluator: the hand-ordered Tucker kernel, with a memory-lean backward.

TeRA's network (paper Eq. 5) has the operands ``(G, d_1, A_1, ..., d_N, A_N)`` (the order
:mod:`tera.adapters.tera` builds); its first ``k`` modes index the input features, the rest
the output features. :class:`TuckerEvaluator` evaluates it for the engine in the
contraction order of ``tera.tn.kernels`` (``d`` folded into the small factors, one GEMM
per group of modes, no permute copies) and adds what training needs on top of that
algebra:

* a backward (a :class:`torch.autograd.Function`) that stores nothing of size ``prod(I)``:
  it maps the incoming gradient back through the factors once,
  ``grad_C = grad_M x_n A_n^T`` (one pass of the same cost as the forward), and reads each
  ``grad d_n`` off ``grad_C * G`` with matrix-vector products. Peak extra memory is two
  tensors of size ``prod(I)`` whatever the order ``N``;
* a cache of what it derives from the frozen factors on every call (the core permuted to
  torch's ``out x in`` order, Kronecker products of factor groups), checked against the
  tensors themselves (weak references and version counters);
* the float32 matmul precision of its forward (TF32 or not, set by the
  :mod:`execution policy <tera.adapters.policy>`), restored for its backward.

The FLOP counts are :func:`tera.tn.kernels.scaled_tucker_flops` and
:func:`tera.tn.kernels.scaled_tucker_push_flops`.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from tera.adapters.policy import precision, precision_set_to
from tera.errors import ShapeError
from tera.tn._backend import Array
from tera.tn.kernels import (
    apply_mode_groups,
    apply_scaled_factors,
    check_scaled_tucker,
    kron_matrices,
    merge_small_modes,
    scaled_tucker_flops,
    scaled_tucker_push_flops,
)

if TYPE_CHECKING:
    from tera.adapters.engine import Network

__all__ = ["TuckerEvaluator", "lean_tucker_matrix"]


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
    return kron_matrices([a.T for a in mats])


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


def _row_outer(vectors: Sequence[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Per row: the flat (row-major) outer product of its adapter's vectors, ``(rows, prod R)``.

    ``vectors[n]`` is a bank ``(adapters, R_n)``; the outer products are formed per adapter
    of the bank (a few hundred numbers each) and then gathered by row.
    """
    outer = vectors[0]
    for v in vectors[1:]:
        outer = (outer[:, :, None] * v[:, None, :]).reshape(outer.shape[0], -1)
    return outer.index_select(0, rows)


def _group_krons(
    mats: Sequence[torch.Tensor], groups: list[list[int]], tag: str, transpose: bool
) -> list[torch.Tensor]:
    """Per group of modes: the Kronecker product of the (transposed) factors, cached."""
    merged = []
    for g in groups:
        chosen = [mats[n] for n in g]
        if len(g) == 1:
            merged.append(chosen[0].T if transpose else chosen[0])
        elif transpose:
            merged.append(_derived(chosen, (tag,), functools.partial(_kron_t, chosen)))
        else:
            merged.append(_derived(chosen, (tag,), functools.partial(kron_matrices, chosen)))
    return merged


def _transposed_in_krons(
    factors: Sequence[torch.Tensor], groups: list[list[int]]
) -> list[torch.Tensor]:
    return _group_krons(factors, groups, "kron-T", transpose=True)


def _out_krons(factors: Sequence[torch.Tensor], groups: list[list[int]]) -> list[torch.Tensor]:
    return _group_krons(factors, groups, "kron", transpose=False)


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
        ctx.precision = precision()  # the backward runs with the same
        # in the operands' dtype (float32 at least) even under autocast: the engine's policy
        with torch.autocast(core.device.type, enabled=False):
            return _ScaledTucker._forward(ctx, core, vectors, factors, k, transpose)

    @staticmethod
    def _forward(
        ctx: Any,
        core: torch.Tensor,
        vectors: Sequence[torch.Tensor],
        factors: Sequence[torch.Tensor],
        k: int,
        transpose: bool,
    ) -> torch.Tensor:
        n = core.ndim
        if transpose:
            order = list(range(k, n)) + list(range(k))
            ctx.permuted_core = _permuted(core, order)
            cols = math.prod(int(a.shape[1]) for a in factors[k:])
            m = apply_scaled_factors(
                ctx.permuted_core, [vectors[i] for i in order], [factors[i] for i in order]
            )
            return m.reshape(cols, -1)
        rows = math.prod(int(a.shape[1]) for a in factors[:k])
        return apply_scaled_factors(core, vectors, factors).reshape(rows, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        with precision_set_to(ctx.precision):
            return _ScaledTucker._backward(ctx, grad)

    @staticmethod
    def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        core, *tensors = ctx.saved_tensors
        n = core.ndim
        vectors, factors = tensors[:n], tensors[n:]
        grad = grad.to(core.dtype)  # a consumer under autocast may send a half gradient
        order = list(range(n))
        if ctx.transpose:
            if grad.is_contiguous():  # the tensor with the column modes first
                order = order[ctx.k :] + order[: ctx.k]
            else:
                grad = grad.T
        modes = [int(factors[i].shape[1]) for i in order]
        groups = merge_small_modes(modes)
        back = _transposed_krons(factors, order, groups)  # frozen: built once, cached
        grad_core = apply_mode_groups(grad.contiguous(), modes, [], groups, merged=back)
        ranks = [int(core.shape[i]) for i in order]
        permuted_core = ctx.permuted_core if order != list(range(n)) else core
        h = grad_core.reshape(ranks).mul_(permuted_core)
        permuted = _all_but_one(h, [vectors[i] for i in order])
        grads: list[torch.Tensor | None] = [None] * n
        for i, g in zip(order, permuted, strict=True):
            grads[i] = g if ctx.needs_input_grad[3 + i] else None
        return (None, None, None, *grads, *(None,) * n)


def lean_tucker_matrix(
    core: Array,
    vectors: Sequence[Array],
    factors: Sequence[Array],
    k: int,
    scale: float = 1.0,
    transpose: bool = False,
) -> Array:
    r"""``unfold_[N;k](G x_1 diag(d_1) A_1 ... x_N diag(d_N) A_N) * scale``, with the lean backward.

    The same matrix as :func:`tera.tn.kernels.scaled_tucker_matrix` (same arguments), but
    for torch inputs the gradient reaches the vectors through the memory-lean backward of
    this module; if the core or a factor requires grad, the same contraction order runs
    under plain autograd instead (which stores its intermediates).

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
        The ``prod(I[:k]) x prod(I[k:])`` matrix (or its transpose).

    Examples
    --------
    >>> import torch
    >>> from tera.tn import tucker_to_matrix
    >>> from tera.adapters.tera_kernel import lean_tucker_matrix
    >>> f64 = {"dtype": torch.float64}
    >>> G = torch.randn(4, 2, 3, **f64)
    >>> A = [torch.randn(4, 4, **f64), torch.randn(2, 2, **f64), torch.randn(3, 3, **f64)]
    >>> d = [torch.rand(4, **f64).requires_grad_(), torch.rand(2, **f64), torch.rand(3, **f64)]
    >>> M = lean_tucker_matrix(G, d, A, k=1)
    >>> ref = tucker_to_matrix(G, [v[:, None] * a for v, a in zip(d, A)], k=1)
    >>> M.shape, bool(torch.allclose(M, ref))
    (torch.Size([4, 6]), True)
    """
    check_scaled_tucker(core, vectors, factors, k)
    if isinstance(core, np.ndarray):
        out = lean_tucker_matrix(
            torch.from_numpy(core),
            [torch.from_numpy(np.asarray(v)) for v in vectors],
            [torch.from_numpy(np.asarray(a)) for a in factors],
            k,
            scale,
            transpose,
        )
        return cast(Array, out.numpy())
    m = _matrix(core, list(vectors), list(factors), k, transpose)
    return cast(Array, m * scale if scale != 1.0 else m)


def _matrix(
    core: torch.Tensor,
    vectors: Sequence[torch.Tensor],
    factors: Sequence[torch.Tensor],
    k: int,
    transpose: bool,
) -> torch.Tensor:
    """:func:`lean_tucker_matrix` of checked torch operands, unscaled."""
    if core.requires_grad or any(a.requires_grad for a in factors):
        rows = math.prod(int(a.shape[1]) for a in factors[:k])
        m = apply_scaled_factors(core, vectors, factors).reshape(rows, -1)
        return m.T if transpose else m
    return cast(torch.Tensor, _ScaledTucker.apply(core, k, transpose, *vectors, *factors))  # type: ignore[no-untyped-call]


class TuckerEvaluator:
    """The engine's evaluator of TeRA's Tucker network ``(G, d_1, A_1, ..., d_N, A_N)``.

    Built once per layer from its network: the operands are checked here (a core of order
    ``N``, one vector and one ``R_n x I_n`` factor per mode) and the mode groups and FLOP
    counts computed, so the per-call methods check nothing. ``dW`` is returned as torch's
    ``out x in`` (the transpose of the paper's ``[N;k]`` unfolding).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network
    >>> from tera.adapters.tera_kernel import TuckerEvaluator
    >>> G, A1, A2 = torch.randn(3, 2), torch.randn(3, 3), torch.randn(2, 2)
    >>> ops = (G, torch.ones(3), A1, torch.ones(2), A2)
    >>> net = Network(("ab", "a", "ai", "b", "bo"), ops, "i", "o", (3,), (2,))
    >>> dW = TuckerEvaluator(net).delta_weight(ops)
    >>> dW.shape, bool(torch.allclose(dW, (A1.T @ G @ A2).T, atol=1e-6))
    (torch.Size([2, 3]), True)
    """

    dense_push = True

    def __init__(self, net: Network) -> None:
        ops = net.operands
        k = len(net.in_subscripts)
        check_scaled_tucker(ops[0], list(ops[1::2]), list(ops[2::2]), k)
        if len(ops) != 1 + 2 * ops[0].ndim:
            raise ShapeError(
                f"a Tucker network of order {ops[0].ndim} has {1 + 2 * ops[0].ndim} operands "
                f"(G, then d_n and A_n per mode), got {len(ops)}"
            )
        self.k = k
        self.ranks = [int(a.shape[0]) for a in ops[2::2]]
        self.modes = [int(a.shape[1]) for a in ops[2::2]]
        self._n_in = math.prod(self.modes[:k])
        self._n_out = math.prod(self.modes[k:])
        self._core_rows = math.prod(self.ranks[:k])
        self._in_groups = merge_small_modes(self.modes[:k])
        self._out_groups = merge_small_modes(self.modes[k:])
        self._build = (
            scaled_tucker_flops(self.ranks, self.modes),
            scaled_tucker_flops(self.ranks, self.modes, backward=True),
        )
        # the push's FLOPs are linear in the token count
        self._push = (
            scaled_tucker_push_flops(self.ranks, self.modes, k, 1),
            scaled_tucker_push_flops(self.ranks, self.modes, k, 1, backward=True),
        )

    def delta_weight(self, operands: Sequence[torch.Tensor]) -> torch.Tensor:
        """``dW`` as ``out x in`` (a view of the contiguous ``in x out`` transpose)."""
        return _matrix(operands[0], operands[1::2], operands[2::2], self.k, transpose=True)

    def push(self, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T``: the input modes' factors, the core as one GEMM, the output modes'.

        A handful of GEMMs whose cost grows with the number of rows, never with
        ``prod(I)`` (as :func:`tera.tn.kernels.scaled_tucker_push`).
        """
        core, k = operands[0], self.k
        scaled = [v[:, None] * a for v, a in zip(operands[1::2], operands[2::2], strict=True)]
        lead = tuple(x.shape[:-1])
        rows = math.prod(lead)
        h = apply_mode_groups(
            x.reshape(rows, self._n_in),
            self.modes[:k],
            [b.T for b in scaled[:k]],
            self._in_groups,
            lead=rows,
        )
        # explicit sizes: with no rows (an empty batch) a -1 would be ambiguous
        h = h.reshape(rows, self._core_rows) @ core.reshape(self._core_rows, -1)
        h = apply_mode_groups(h, self.ranks[k:], scaled[k:], self._out_groups, lead=rows)
        return h.reshape(*lead, self._n_out)

    def push_rows(
        self,
        operands: Sequence[torch.Tensor],
        stacked: Sequence[bool],
        x: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """``x[b] @ dW_{rows[b]}.T`` for every leading row ``b``: many adapters, one pass.

        Every adapter of a bank shares ``G`` and the ``A_n``; only the ``d_n`` differ, and
        they are stacked (``stacked`` flags them: a leading adapter axis). Since
        ``diag(d_n)`` sits between the shared factors, a per-row ``d`` is an elementwise
        scale of the activations: the unscaled input factors, then the outer product of
        the row's input ``d``'s, the core as one GEMM, the outer product of its output
        ``d``'s, the unscaled output factors. The GEMMs are the single-adapter push's,
        whatever the number of adapters (the Kronecker products of the frozen factor
        groups are cached). ``x`` is ``(rows, tokens, in)``.

        Examples
        --------
        >>> import torch
        >>> from tera.adapters.engine import Network
        >>> from tera.adapters.tera_kernel import TuckerEvaluator
        >>> G, A1, A2 = torch.randn(3, 2), torch.randn(3, 3), torch.randn(2, 2)
        >>> d1, d2 = torch.randn(4, 3), torch.randn(4, 2)   # a bank of 4 adapters
        >>> net = Network(("ab", "a", "ai", "b", "bo"), (G, d1[0], A1, d2[0], A2), "i", "o",
        ...               (3,), (2,))
        >>> ev, x = TuckerEvaluator(net), torch.randn(2, 5, 3)
        >>> y = ev.push_rows((G, d1, A1, d2, A2), (False, True, False, True, False), x,
        ...                  torch.tensor([3, 1]))
        >>> bool(torch.allclose(y[0], ev.push((G, d1[3], A1, d2[3], A2), x[0]), atol=1e-5))
        True
        """
        core, k = operands[0], self.k
        if any(stacked[0::2]) or not all(stacked[1::2]):
            raise ShapeError(
                "a TeRA bank stacks the d vectors only; adapters with other frozen factors "
                "(another seed or scheme) go into banks of their own"
            )
        vectors, factors = list(operands[1::2]), list(operands[2::2])
        n_rows, tokens = int(x.shape[0]), int(x.shape[1])
        flat = n_rows * tokens
        h = apply_mode_groups(
            x.reshape(flat, self._n_in),
            self.modes[:k],
            [a.T for a in factors[:k]],
            self._in_groups,
            lead=flat,
            merged=_transposed_in_krons(factors[:k], self._in_groups),
        )
        # explicit sizes: with no rows or no tokens a -1 would be ambiguous
        core_cols = core.numel() // self._core_rows
        h = h.reshape(n_rows, tokens, self._core_rows) * _row_outer(vectors[:k], rows)[:, None, :]
        h = h.reshape(flat, self._core_rows) @ core.reshape(self._core_rows, core_cols)
        h = h.reshape(n_rows, tokens, core_cols) * _row_outer(vectors[k:], rows)[:, None, :]
        h = apply_mode_groups(
            h.reshape(flat, core_cols),
            self.ranks[k:],
            factors[k:],
            self._out_groups,
            lead=flat,
            merged=_out_krons(factors[k:], self._out_groups),
        )
        return h.reshape(n_rows, tokens, self._n_out)

    def build_flops(self, backward: bool) -> int:
        """From :func:`tera.tn.kernels.scaled_tucker_flops`."""
        return self._build[backward]

    def push_flops(self, tokens: int, backward: bool) -> int:
        """From :func:`tera.tn.kernels.scaled_tucker_push_flops`."""
        return tokens * self._push[backward]

"""One engine for every adapter: a network of named operands, evaluated two ways.

An adapter describes its weight update as a :class:`Network`: einsum subscripts over its
operands (trainable vectors/matrices, frozen shared factors, or the base weight itself),
which subscripts index the layer's input and output features, and the **evaluator** the
adapter declares for it. Every evaluator implements one protocol (:class:`Evaluator`):
build ``dW``, push ``x`` through the operands without forming ``dW``, and the FLOPs of each,
forward and backward. Three exist:

* :class:`~tera.adapters.tera_kernel.TuckerEvaluator`, TeRA's hand-ordered Tucker kernel
  (in :mod:`tera.adapters.tera_kernel`, beside TeRA);
* :class:`ChainEvaluator`, the chain of thin ``F.linear`` steps LoRA and VeRA declare;
* :class:`EinsumEvaluator`, the planned einsum (opt_einsum), the default for any other
  network (HiRA's Hadamard product with ``W0``, custom networks).

The engine then chooses between **materializing** ``dW`` (``out x in``, one matmul, fused
into ``W0`` when the :mod:`execution policy <tera.adapters.policy>` allows) and **pushing**
the activations, from the evaluator's FLOP counts for the call's token count alone (forward
and, when the adapter trains, backward); it has no adapter-specific branch. Both paths give
the same result up to rounding.

A layer's evaluator is built, and its network validated, once (:class:`LayerEngine`); the
per-call path does no validation, no planning and builds no objects beyond the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

import opt_einsum
import torch
import torch.nn.functional as F

from tera.adapters.policy import ExecutionPolicy, cuda_tf32
from tera.errors import ShapeError
from tera.tn import ContractionPlan, plan

__all__ = [
    "COMPUTE_DTYPE",
    "ChainEvaluator",
    "EinsumEvaluator",
    "EvalPath",
    "Evaluator",
    "LayerEngine",
    "Network",
    "build_evaluator",
    "choose_path",
    "delta_weight",
    "needs_backward",
    "path_costs",
    "push",
    "validate_network",
]

EvalPath = Literal["materialize", "push"]
"""The two ways the engine evaluates an adapter."""
COMPUTE_DTYPE = torch.float32
"""Adapters compute in at least float32 (half inputs are upcast, the result cast back)."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _not_compiled(fn: _F) -> _F:
    """Keep ``torch.compile`` out of planning and decisions (Python bookkeeping)."""
    return cast(_F, torch.compiler.disable(fn))  # type: ignore[no-untyped-call]


def needs_backward(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a call on ``tensors`` records a backward (grad mode on, one of them trains).

    The one test of "is it training?" behind every pricing decision.
    """
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class Evaluator(Protocol):
    """How one network of fixed shapes is evaluated: the protocol of every evaluator.

    An evaluator is built once per layer from a :class:`Network` (``Evaluator(net)``), which
    it may validate further; its methods then take the operands in the network's order,
    already in the compute dtype with ``Network.scale`` folded in, and check nothing.

    Attributes
    ----------
    dense_push : bool
        Whether the push is dense arithmetic, priced at the policy's ``push_rate``
        (TeRA's core, HiRA's base weight); a chain of thin matrices (LoRA, VeRA) is bound
        by memory traffic and keeps a rate of one.
    """

    dense_push: bool

    def delta_weight(self, operands: Sequence[torch.Tensor]) -> torch.Tensor:
        """``dW`` as ``out x in`` (unscaled: the scale is folded into the operands)."""
        ...

    def push(self, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` for ``x`` of shape ``(..., in_features)``, without forming ``dW``."""
        ...

    def push_rows(
        self,
        operands: Sequence[torch.Tensor],
        stacked: Sequence[bool],
        x: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """``x[b] @ dW_{rows[b]}.T`` for every leading row ``b`` of ``x`` (a *bank*).

        The operands flagged in ``stacked`` carry a leading adapter axis (the tensors of
        several adapters of one network, stacked); ``rows[b]`` picks row ``b``'s adapter.
        ``x`` is ``(rows, tokens, in_features)``.
        """
        ...

    def build_flops(self, backward: bool) -> int:
        """FLOPs of :meth:`delta_weight`'s forward (or of its backward alone)."""
        ...

    def push_flops(self, tokens: int, backward: bool) -> int:
        """FLOPs of :meth:`push` on ``tokens`` rows (forward, or its backward alone)."""
        ...


EvaluatorFactory = Callable[["Network"], Evaluator]
"""What an adapter declares: a callable (an evaluator class) building it from a network."""


@dataclass(frozen=True)
class Network:
    """An adapter's ``dW`` as an einsum network, with the evaluator it declares.

    Attributes
    ----------
    subscripts : tuple of str
        One subscript string per operand.
    operands : tuple of torch.Tensor
        The operands (trainable, frozen-shared or the base weight).
    in_subscripts : str
        Subscripts of the input features, in row-major order (their sizes multiply to
        ``in_features``).
    out_subscripts : str
        Subscripts of the output features, row-major.
    in_shape : tuple of int
        Sizes of the input subscripts.
    out_shape : tuple of int
        Sizes of the output subscripts.
    scale : float
        A scalar applied to ``dW``.
    evaluator : callable or None
        The evaluator class the adapter declares (built with the network); ``None``: the
        planned einsum, :class:`EinsumEvaluator`.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, delta_weight
    >>> A, B = torch.ones(2, 3), torch.ones(4, 2)
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (3,), (4,), scale=0.5)
    >>> delta_weight(net).shape
    torch.Size([4, 3])
    """

    subscripts: tuple[str, ...]
    operands: tuple[torch.Tensor, ...]
    in_subscripts: str
    out_subscripts: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    scale: float = 1.0
    evaluator: EvaluatorFactory | None = None

    @property
    def in_features(self) -> int:
        """Product of the input mode sizes."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        """Product of the output mode sizes."""
        return math.prod(self.out_shape)

    def dw_equation(self) -> str:
        """Einsum equation producing dW with output modes first (torch ``out x in``)."""
        return ",".join(self.subscripts) + "->" + self.out_subscripts + self.in_subscripts

    def batch_symbol(self) -> str:
        """A subscript not used by the network, for the token dimension."""
        used = set("".join(self.subscripts))
        symbols = (str(opt_einsum.get_symbol(i)) for i in range(200))
        return next(s for s in symbols if s not in used)

    def push_equation(self) -> str:
        """Einsum equation mapping tokens ``x`` (T, in modes) to (T, out modes)."""
        z = self.batch_symbol()
        return (
            f"{z}{self.in_subscripts}," + ",".join(self.subscripts) + f"->{z}{self.out_subscripts}"
        )

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Operand shapes."""
        return tuple(tuple(op.shape) for op in self.operands)


def validate_network(net: Network) -> None:
    """Raise :class:`~tera.errors.ShapeError` unless the network is consistent.

    One subscript string per operand, one letter per operand dimension, every letter of one
    size wherever it appears, and the input/output subscripts naming letters of the
    operands with the sizes ``in_shape``/``out_shape``. Called once, when a layer's
    evaluator is built.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, validate_network
    >>> validate_network(Network(("ri", "or"), (torch.ones(2, 3), torch.ones(4, 3)),
    ...                          "i", "o", (3,), (4,)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tera.errors.ShapeError: subscript 'r' has size 3 in operand 1 ('or', shape (4, 3)) but 2 ...
    """
    if len(net.subscripts) != len(net.operands):
        raise ShapeError(
            f"the network has {len(net.subscripts)} subscript strings but "
            f"{len(net.operands)} operands; give one subscript string per operand"
        )
    sizes: dict[str, int] = {}
    for i, (sub, op) in enumerate(zip(net.subscripts, net.operands, strict=True)):
        if len(sub) != op.ndim:
            raise ShapeError(
                f"operand {i} has shape {tuple(op.shape)} but subscripts {sub!r}; give one "
                "letter per dimension"
            )
        for letter, size in zip(sub, op.shape, strict=True):
            if sizes.setdefault(letter, int(size)) != size:
                raise ShapeError(
                    f"subscript {letter!r} has size {int(size)} in operand {i} ({sub!r}, shape "
                    f"{tuple(op.shape)}) but {sizes[letter]} in an earlier operand; the "
                    "operands do not form the network"
                )
    for side, subs, shape in (
        ("in", net.in_subscripts, net.in_shape),
        ("out", net.out_subscripts, net.out_shape),
    ):
        found = tuple(sizes.get(s) for s in subs)
        if found != tuple(shape):
            raise ShapeError(
                f"{side}_subscripts {subs!r} have sizes {found} in the operands but "
                f"{side}_shape is {tuple(shape)}"
            )


def _limit(output: int, shapes: tuple[tuple[int, ...], ...]) -> int:
    """No intermediate larger than the output or the largest operand (see tera.tn.plan)."""
    return max(output, *(math.prod(s) for s in shapes))


@_not_compiled
def _dw_plan(net: Network) -> ContractionPlan:
    shapes = net.shapes()
    limit = _limit(net.in_features * net.out_features, shapes)
    return plan(net.dw_equation(), *shapes, memory_limit=limit)


def _push_plan(net: Network, tokens: int) -> ContractionPlan:
    return _planned_push(net.push_equation(), net.shapes(), net.in_shape, net.out_shape, tokens)


@_not_compiled
def _planned_push(
    equation: str,
    shapes: tuple[tuple[int, ...], ...],
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    tokens: int,
) -> ContractionPlan:
    full = ((tokens, *in_shape), *shapes)
    limit = _limit(tokens * max(math.prod(in_shape), math.prod(out_shape)), full)
    return plan(equation, *full, memory_limit=limit)


class EinsumEvaluator:
    """The planned einsum: the default evaluator of any network.

    ``dW`` is one contraction planned by :func:`tera.tn.plan` (planned here, once); the
    push is one planned contraction per token count (planned on first use of that count).
    Pushing with a trainable matrix (LoRA's ``A``/``B``, HiRA's) costs its forward again for
    the weight gradients, on top of the input gradient.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import EinsumEvaluator, Network
    >>> net = Network(("ri", "or"), (torch.ones(2, 3), torch.ones(4, 2)), "i", "o", (3,), (4,))
    >>> ev = EinsumEvaluator(net)
    >>> ev.delta_weight(net.operands).shape, ev.build_flops(False), ev.push_flops(10, False)
    (torch.Size([4, 3]), 48, 280)
    """

    dense_push = True

    def __init__(self, net: Network) -> None:
        # shapes and equations only: no reference to the operands outlives the build
        self._out, self._in = net.out_features, net.in_features
        self._in_shape, self._out_shape = tuple(net.in_shape), tuple(net.out_shape)
        self._shapes = net.shapes()
        self._push_equation = net.push_equation()
        self._dw = _dw_plan(net)
        self._push_plans: dict[int, ContractionPlan] = {}
        self._trains_matrix = any(op.requires_grad and op.ndim >= 2 for op in net.operands)

    def _push_plan(self, tokens: int) -> ContractionPlan:
        found = self._push_plans.get(tokens)
        if found is None:
            if len(self._push_plans) >= 64:
                self._push_plans.clear()
            found = self._push_plans[tokens] = _planned_push(
                self._push_equation, self._shapes, self._in_shape, self._out_shape, tokens
            )
        return found

    def delta_weight(self, operands: Sequence[torch.Tensor]) -> torch.Tensor:
        """``dW`` (``out x in``) by the planned contraction."""
        return self._dw(*operands).reshape(self._out, self._in)

    def push(self, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` by the planned contraction for ``x``'s token count."""
        lead = tuple(x.shape[:-1])
        tokens = math.prod(lead)
        xt = x.reshape(tokens, *self._in_shape)
        out = self._push_plan(tokens)(xt, *operands)
        return out.reshape(*lead, self._out)

    def push_rows(
        self,
        operands: Sequence[torch.Tensor],
        stacked: Sequence[bool],
        x: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """A bank adapter by adapter: :meth:`push` of each adapter on its own rows.

        The generic form of the protocol's bank method (evaluators that can do better,
        TeRA's and the chain's, run the whole bank in one pass).
        """
        out = x.new_zeros(*x.shape[:-1], self._out)
        for adapter in torch.unique(rows).tolist():
            sel = torch.nonzero(rows == adapter).reshape(-1)
            ops = [op[adapter] if flag else op for op, flag in zip(operands, stacked, strict=True)]
            out = out.index_add(0, sel, self.push(ops, x.index_select(0, sel)))
        return out

    def build_flops(self, backward: bool) -> int:
        """The plan's FLOPs; its backward about twice as many."""
        return (2 if backward else 1) * self._dw.flops

    def push_flops(self, tokens: int, backward: bool) -> int:
        """The plan's FLOPs; its backward retraces it, twice with trainable matrices.

        The input gradient costs the forward again; trainable matrices (LoRA) add as much
        again for their weight gradients, trainable vectors only cheap reductions.
        """
        flops = self._push_plan(tokens).flops
        return (2 if self._trains_matrix else 1) * flops if backward else flops


_Step = tuple[int, bool, tuple[int, ...]]
"""One matrix of a chain: operand index, whether it is stored ``next x current`` (as
``F.linear`` wants it), and the indices of the vectors scaling its output index."""


def _chain_of(subs: tuple[str, ...], in_sub: str, out_sub: str) -> tuple[_Step, ...] | None:
    """The network as a chain ``x -> M_1 -> diag(v) -> M_2 ...`` (LoRA, VeRA), else None."""
    if len(in_sub) != 1 or len(out_sub) != 1:
        return None
    if any(len(sub) not in (1, 2) or (len(sub) == 2 and sub[0] == sub[1]) for sub in subs):
        return None
    vectors: dict[str, list[int]] = {}
    for i, sub in enumerate(subs):
        if len(sub) == 1:
            vectors.setdefault(sub, []).append(i)
    matrices = [i for i, sub in enumerate(subs) if len(sub) == 2]
    current, used, steps = in_sub, set(), list[_Step]()
    while current != out_sub or not steps:
        nxt = [i for i in matrices if i not in used and current in subs[i]]
        if len(nxt) != 1:
            return None
        i = nxt[0]
        used.add(i)
        stored_next_first = subs[i][1] == current
        current = subs[i][0] if stored_next_first else subs[i][1]
        steps.append((i, stored_next_first, tuple(vectors.pop(current, []))))
    leading = vectors.pop(in_sub, None)
    if vectors or leading or len(used) != len(matrices):
        return None
    return tuple(steps)


class ChainEvaluator(EinsumEvaluator):
    """A chain ``x -> M_1 -> diag(v) -> M_2 -> diag(w) ...`` pushed with ``F.linear``.

    Declared by LoRA (``B A``) and VeRA (``diag(b) B diag(d) A``): the push runs as HF
    PEFT's layers compute, one ``F.linear`` per thin matrix; ``dW`` and the FLOP counts are
    the planned einsum's (:class:`EinsumEvaluator`). Bound by memory traffic, not by
    FLOPs, so the float32 push rate of a half-precision GPU policy does not apply.

    Raises
    ------
    ShapeError
        If the network is not such a chain.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import ChainEvaluator, Network
    >>> A, B = torch.randn(2, 3), torch.randn(4, 2)
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (3,), (4,))
    >>> x = torch.randn(5, 3)
    >>> bool(torch.allclose(ChainEvaluator(net).push(net.operands, x), x @ (B @ A).T))
    True
    """

    dense_push = False

    def __init__(self, net: Network) -> None:
        chain = _chain_of(net.subscripts, net.in_subscripts, net.out_subscripts)
        if chain is None:
            raise ShapeError(
                f"the network {net.dw_equation()!r} is not a chain of matrices and vectors "
                "from the input to the output index; declare no evaluator (the planned "
                "einsum) for it"
            )
        super().__init__(net)
        self._chain = chain

    def push(self, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` through the chain.

        A frozen vector is folded into its matrix (a pass over ``r x in`` numbers instead
        of ``tokens x r``); a trainable one scales the activations, so its gradient is a
        cheap reduction and not the weight gradient of the folded matrix.
        """
        h = x
        grad = torch.is_grad_enabled()
        for i, stored_next_first, vector_ids in self._chain:
            m = operands[i] if stored_next_first else operands[i].T
            scaling = []
            for v in vector_ids:
                if grad and operands[v].requires_grad:
                    scaling.append(operands[v])
                else:
                    m = operands[v][:, None] * m
            h = F.linear(h, m)
            for vec in scaling:
                h = h * vec
        return h

    def push_rows(
        self,
        operands: Sequence[torch.Tensor],
        stacked: Sequence[bool],
        x: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """``x[b] @ dW_{rows[b]}.T`` for every leading row ``b``: many adapters in one pass.

        The operands flagged in ``stacked`` carry a leading adapter axis (a bank of several
        adapters' tensors of one shape); ``rows[b]`` picks row ``b``'s adapter. A stacked
        vector scales the activations row by row (VeRA: one pass of the shared ``F.linear``
        for the whole batch); a stacked matrix is gathered per row and applied with one
        batched GEMM (LoRA: grouped GEMMs, no loop over rows or adapters). ``x`` is
        ``(rows, tokens, in)``.

        Examples
        --------
        >>> import torch
        >>> from tera.adapters.engine import ChainEvaluator, Network
        >>> A, B = torch.randn(2, 3), torch.randn(4, 2)
        >>> d = torch.randn(5, 2)   # a bank of 5 adapters' vectors
        >>> net = Network(("or", "r", "ri"), (B, d[0], A), "i", "o", (3,), (4,))
        >>> x, rows = torch.randn(3, 7, 3), torch.tensor([4, 0, 4])
        >>> y = ChainEvaluator(net).push_rows((B, d, A), (False, True, False), x, rows)
        >>> ref = x[1] @ (B @ torch.diag(d[0]) @ A).T
        >>> bool(torch.allclose(y[1], ref, atol=1e-6))
        True
        """
        h = x
        for i, stored_next_first, vector_ids in self._chain:
            m = operands[i]
            if stacked[i]:
                per_row = m.index_select(0, rows)  # (rows, next, current) or (rows, current, next)
                h = torch.bmm(h, per_row.transpose(1, 2) if stored_next_first else per_row)
            else:
                h = F.linear(h, m if stored_next_first else m.T)
            for v in vector_ids:
                vec = operands[v]
                h = h * (vec.index_select(0, rows)[:, None, :] if stacked[v] else vec)
        return h


def build_evaluator(net: Network) -> Evaluator:
    """Validate ``net`` and build the evaluator it declares (the planned einsum by default).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, build_evaluator
    >>> net = Network(("oi", "or", "ri"), (torch.ones(4, 3), torch.ones(4, 2), torch.ones(2, 3)),
    ...               "i", "o", (3,), (4,))
    >>> type(build_evaluator(net)).__name__
    'EinsumEvaluator'
    """
    validate_network(net)
    factory = net.evaluator if net.evaluator is not None else EinsumEvaluator
    return factory(net)


def _prepare(
    operands: Sequence[torch.Tensor], scale: float, scale_index: int, dtype: torch.dtype | None
) -> list[torch.Tensor]:
    """The operands in the compute dtype, ``scale`` folded into operand ``scale_index``.

    Scaling the smallest operand (``r`` numbers) instead of the ``tokens x out`` result
    saves a pass each way.
    """
    if dtype is not None:
        ops = [op.to(dtype) for op in operands]
    else:
        ops = [
            op if op.dtype == COMPUTE_DTYPE or op.dtype == torch.float64 else op.to(COMPUTE_DTYPE)
            for op in operands
        ]
    if scale != 1.0:
        ops[scale_index] = ops[scale_index] * scale
    return ops


def _smallest(net: Network) -> int:
    return min(range(len(net.operands)), key=lambda i: net.operands[i].numel())


class LayerEngine:
    """The engine of one adapted layer: its evaluator, its execution policy, its decisions.

    Built once per layer and base dtype/device (the evaluator once per layer: validation
    and planning happen here); :meth:`choose` prices both paths from the evaluator's FLOP
    counts and the policy's rates alone and remembers the decision per token count.

    Parameters
    ----------
    net : Network
        The layer's network (its operands give the shapes; their values are not kept).
    policy : ExecutionPolicy
        How the layer runs on its base's device and dtype.
    evaluator : Evaluator, optional
        An evaluator already built for ``net`` (when only the policy changes).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import LayerEngine, Network
    >>> from tera.adapters.policy import ExecutionPolicy
    >>> A, B = torch.ones(2, 64), torch.ones(64, 2)   # LoRA-like, rank 2
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (64,), (64,))
    >>> engine = LayerEngine(net, ExecutionPolicy(fuse=True, apply_dtype=None))
    >>> engine.choose(4, fused=False, backward=False), engine.choose(4096, True, False)
    ('push', 'materialize')
    """

    def __init__(
        self, net: Network, policy: ExecutionPolicy, evaluator: Evaluator | None = None
    ) -> None:
        self.evaluator: Evaluator = evaluator if evaluator is not None else build_evaluator(net)
        self.policy = policy
        self.scale = float(net.scale)
        self.scale_index = _smallest(net)
        self.size = net.in_features * net.out_features
        self._push_rate = policy.push_rate if self.evaluator.dense_push else 1.0
        self._decisions: dict[tuple[int, bool, bool], EvalPath] = {}

    def operands(
        self, operands: Sequence[torch.Tensor], dtype: torch.dtype | None = None
    ) -> list[torch.Tensor]:
        """The operands as the evaluator takes them (compute dtype, scale folded in)."""
        return _prepare(operands, self.scale, self.scale_index, dtype)

    def costs(self, tokens: int, fused: bool, backward: bool) -> dict[EvalPath, float]:
        """Extra FLOPs of each path over the base layer (see :func:`path_costs`)."""
        ev, size, rate = self.evaluator, self.size, self.policy.build_rate
        materialize = rate * ev.build_flops(False) + (size if fused else 2 * tokens * size)
        pushed = ev.push_flops(tokens, False)
        if backward:
            materialize += rate * ev.build_flops(True) + 2 * tokens * size
            materialize += 0 if fused else 2 * tokens * size
            pushed += ev.push_flops(tokens, True)
        return {"materialize": materialize, "push": self._push_rate * pushed}

    @_not_compiled
    def choose(self, tokens: int, fused: bool, backward: bool) -> EvalPath:
        """The cheaper path for ``tokens`` rows (ties go to materializing), remembered."""
        key = (tokens, fused, backward)
        path = self._decisions.get(key)
        if path is None:
            costs = self.costs(max(tokens, 1), fused, backward)
            path = "materialize" if costs["materialize"] <= costs["push"] else "push"
            if len(self._decisions) >= 256:
                self._decisions.clear()
            self._decisions[key] = path
        return path

    def split_bank(self, tokens: Sequence[int], backward: bool) -> bool:
        """Whether a bank costs fewer FLOPs adapter by adapter than in one pass.

        ``tokens`` holds each adapter's token count. One pass pushes every row through the
        shared operands; alone, an adapter with many tokens (a long prefill of few
        adapters) materializes its ``dW`` once instead. Pushing is linear in the tokens,
        so splitting only pays off where some adapter materializes (else the same FLOPs in
        more, smaller calls).
        """
        one_pass = self.costs(sum(tokens), False, backward)["push"]
        alone, materializes = 0.0, False
        for n in tokens:
            if n:
                costs = self.costs(n, False, backward)
                alone += min(costs.values())
                materializes |= costs["materialize"] < costs["push"]
        return materializes and alone < one_pass

    def delta_weight(self, operands: Sequence[torch.Tensor]) -> torch.Tensor:
        """``dW`` (``out x in``) from prepared operands, under the policy's precision."""
        if self.policy.tf32_build:
            with cuda_tf32(True):
                return self.evaluator.delta_weight(operands)
        return self.evaluator.delta_weight(operands)

    def push(self, operands: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` from prepared operands (``x`` cast to their dtype)."""
        if x.dtype != operands[0].dtype:
            x = x.to(operands[0].dtype)
        return self.evaluator.push(operands, x)


def _engine(
    net: Network, build_rate: float = 1.0, push_rate: float = 1.0, fuse: bool = True
) -> LayerEngine:
    policy = ExecutionPolicy(fuse, None, build_rate=build_rate, push_rate=push_rate)
    return LayerEngine(net, policy)


def delta_weight(net: Network, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Materialize ``dW`` (``out_features x in_features``) in at least float32.

    ``dtype`` forces the precision of the whole evaluation (e.g. ``torch.float64`` to
    measure the rank of a poorly conditioned TeRA update).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, delta_weight
    >>> net = Network(("o", "i"), (torch.ones(2), torch.ones(3)), "i", "o", (3,), (2,))
    >>> delta_weight(net).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    engine = _engine(net)
    return engine.evaluator.delta_weight(engine.operands(net.operands, dtype))


def push(net: Network, x: torch.Tensor) -> torch.Tensor:
    """``x @ dW.T`` for ``x`` of shape ``(..., in_features)`` without forming ``dW``.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, delta_weight, push
    >>> A, B = torch.randn(2, 3), torch.randn(4, 2)
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (3,), (4,))
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(push(net, x), x @ delta_weight(net).T, atol=1e-6)
    True
    """
    engine = _engine(net)
    return engine.push(engine.operands(net.operands), x)


def path_costs(
    net: Network,
    tokens: int,
    fused: bool,
    backward: bool = False,
    build_rate: float = 1.0,
    push_rate: float = 1.0,
) -> dict[EvalPath, float]:
    """Estimated extra cost of each path over the frozen base layer's matmuls, in FLOPs.

    ``fused`` means the materialized ``dW`` is added to the base weight and one matmul
    serves both (no second ``2 * tokens * in * out`` product). ``backward`` adds the cost
    of the backward pass when the adapter trains: materializing then pays for the gradient
    of ``dW`` (``2 * tokens * in * out``), the backward of its construction and, unfused,
    a second input-gradient product; pushing pays its evaluator's backward (about its
    forward again for the input gradient, twice when matrices train).

    ``build_rate`` and ``push_rate`` weigh the FLOPs of building ``dW`` and of the push
    path against those of the matmuls with the activations, when they run at other speeds:
    on a GPU with a bfloat16 base, ``dW`` is built in TF32 (half the speed of bf16 tensor
    cores) and the push runs in float32 (~14x slower per FLOP on an H100). ``push_rate``
    applies to dense pushes (TeRA's core, HiRA's base weight); a chain of thin matrices
    (LoRA, VeRA: :class:`ChainEvaluator`) is bound by memory traffic, not by FLOPs, and
    keeps a rate of one (the choice HF PEFT makes for them: they push in float32 whatever
    the base).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, path_costs
    >>> A, B = torch.ones(8, 1024), torch.ones(1024, 8)   # LoRA-like, rank 8
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (1024,), (1024,))
    >>> c = path_costs(net, tokens=2048, fused=True, backward=True)
    >>> c["push"] < c["materialize"]   # training: the weight gradient of dW is expensive
    True
    """
    return _engine(net, build_rate, push_rate).costs(tokens, fused, backward)


@_not_compiled
def choose_path(
    net: Network,
    tokens: int,
    fused: bool,
    backward: bool = False,
    build_rate: float = 1.0,
    push_rate: float = 1.0,
) -> EvalPath:
    """The cheaper evaluation for ``tokens`` rows of input (ties go to materializing).

    The arguments after ``tokens`` are those of :func:`path_costs`. A layer decides with
    its own :class:`LayerEngine`, which remembers its decisions; this function builds one
    for the network each call.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, choose_path
    >>> A, B = torch.ones(2, 64), torch.ones(64, 2)   # LoRA-like, rank 2
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (64,), (64,))
    >>> choose_path(net, tokens=4, fused=False), choose_path(net, tokens=4096, fused=True)
    ('push', 'materialize')
    """
    return _engine(net, build_rate, push_rate).choose(tokens, fused, backward)

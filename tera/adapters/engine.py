"""One engine for every adapter: a network of named operands, evaluated two ways.

An adapter describes its weight update as a :class:`Network`: einsum subscripts over its
operands (trainable vectors/matrices, frozen shared factors, or the base weight itself),
plus which subscripts index the layer's input and output features. The engine evaluates it
either by

* **materializing** ``dW`` (``out x in``) with one planned contraction and running one
  matmul, or
* **pushing** the activations ``x`` through the operands without forming ``dW``,

and picks the cheaper for the actual token count using the FLOP counts of the planned
contractions (plans are cached per shapes by :func:`tera.tn.plan`), forward and, when the
adapter trains, backward. Both give the same result up to rounding.

A network may carry a hand-tuned :class:`TuckerKernel` for materializing ``dW`` (TeRA's
Tucker network: ``d`` folded into the small factors, one GEMM per mode, a backward that
keeps nothing of the size of ``dW``); the generic planned einsum serves everything else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

import opt_einsum
import torch
import torch.nn.functional as F

from tera.tn import ContractionPlan, plan
from tera.tn.kernels import (
    scaled_tucker_flops,
    scaled_tucker_matrix,
    scaled_tucker_push,
    scaled_tucker_push_flops,
)

__all__ = [
    "DeltaKernel",
    "Network",
    "Path",
    "TuckerKernel",
    "choose_path",
    "delta_weight",
    "path_costs",
    "push",
]

Path = Literal["materialize", "push"]
COMPUTE_DTYPE = torch.float32
"""Adapters compute in at least float32 (half inputs are upcast, the result cast back)."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _not_compiled(fn: _F) -> _F:
    """Keep ``torch.compile`` out of planning (Python bookkeeping around opt_einsum)."""
    return cast(_F, torch.compiler.disable(fn))  # type: ignore[no-untyped-call]


class DeltaKernel(Protocol):
    """Hand-tuned evaluators of one network: its ``dW`` (``out x in``) and its push."""

    def __call__(self, operands: list[torch.Tensor]) -> torch.Tensor:
        """``dW`` (``out x in``, unscaled) from the network's operands."""
        ...

    def flops(self, shapes: tuple[tuple[int, ...], ...], backward: bool) -> int:
        """FLOPs of the forward (or of the backward) evaluation."""
        ...

    def push(self, operands: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` for ``x`` of shape ``(..., in_features)``, without forming ``dW``."""
        ...

    def push_flops(self, shapes: tuple[tuple[int, ...], ...], tokens: int, backward: bool) -> int:
        """FLOPs of :meth:`push` on ``tokens`` rows (forward, or its backward)."""
        ...


@dataclass(frozen=True)
class TuckerKernel:
    """``dW`` of a Tucker network with operands ``(G, d_1, A_1, ..., d_N, A_N)``.

    The first ``k`` modes index the input features, the rest the output features (TeRA's
    layout), so the paper-orientation matrix ``in x out`` is returned transposed (a view).
    Evaluated by :func:`tera.tn.kernels.scaled_tucker_matrix`.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import TuckerKernel
    >>> G, A1, A2 = torch.randn(3, 2), torch.randn(3, 3), torch.randn(2, 2)
    >>> dW = TuckerKernel(k=1)([G, torch.ones(3), A1, torch.ones(2), A2])
    >>> dW.shape, bool(torch.allclose(dW, (A1.T @ G @ A2).T, atol=1e-6))
    (torch.Size([2, 3]), True)
    """

    k: int

    def __call__(self, operands: list[torch.Tensor]) -> torch.Tensor:
        """``dW`` as ``out x in``."""
        core, vectors, factors = operands[0], operands[1::2], operands[2::2]
        return scaled_tucker_matrix(core, vectors, factors, self.k, transpose=True)

    @staticmethod
    def _ranks_and_modes(shapes: tuple[tuple[int, ...], ...]) -> tuple[list[int], list[int]]:
        factors = shapes[2::2]
        return [f[0] for f in factors], [f[1] for f in factors]

    def flops(self, shapes: tuple[tuple[int, ...], ...], backward: bool) -> int:
        """FLOPs from :func:`tera.tn.kernels.scaled_tucker_flops`."""
        ranks, modes = self._ranks_and_modes(shapes)
        return scaled_tucker_flops(ranks, modes, backward=backward)

    def push(self, operands: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``x @ dW.T`` by :func:`tera.tn.kernels.scaled_tucker_push`."""
        core, vectors, factors = operands[0], operands[1::2], operands[2::2]
        return scaled_tucker_push(x, core, vectors, factors, self.k)

    def push_flops(self, shapes: tuple[tuple[int, ...], ...], tokens: int, backward: bool) -> int:
        """FLOPs from :func:`tera.tn.kernels.scaled_tucker_push_flops`."""
        ranks, modes = self._ranks_and_modes(shapes)
        return scaled_tucker_push_flops(ranks, modes, self.k, tokens, backward=backward)


@dataclass(frozen=True)
class Network:
    """An adapter's ``dW`` as an einsum network.

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
    kernel : DeltaKernel or None
        A hand-tuned evaluator of ``dW`` used instead of the planned einsum.

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
    kernel: DeltaKernel | None = None

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


def _limit(output: int, shapes: tuple[tuple[int, ...], ...]) -> int:
    """No intermediate larger than the output or the largest operand (see tera.tn.plan)."""
    return max(output, *(math.prod(s) for s in shapes))


@_not_compiled
def _dw_plan(net: Network) -> ContractionPlan:
    shapes = net.shapes()
    limit = _limit(net.in_features * net.out_features, shapes)
    return plan(net.dw_equation(), *shapes, memory_limit=limit)


@_not_compiled
def _push_plan(net: Network, tokens: int) -> ContractionPlan:
    shapes = ((tokens, *net.in_shape), *net.shapes())
    limit = _limit(tokens * max(net.in_features, net.out_features), shapes)
    return plan(net.push_equation(), *shapes, memory_limit=limit)


def _operands(net: Network, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """The operands in the compute dtype, ``net.scale`` folded into the smallest one.

    Scaling ``r`` numbers instead of the ``tokens x out`` result saves a pass each way.
    """
    if dtype is not None:
        ops = [op.to(dtype) for op in net.operands]
    else:
        ops = [
            op if op.dtype == COMPUTE_DTYPE or op.dtype == torch.float64 else op.to(COMPUTE_DTYPE)
            for op in net.operands
        ]
    if net.scale != 1.0:
        smallest = min(range(len(ops)), key=lambda i: ops[i].numel())
        ops[smallest] = ops[smallest] * net.scale
    return ops


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
    ops = _operands(net, dtype)
    if net.kernel is not None:
        dw = net.kernel(ops)
    else:
        dw = _dw_plan(net)(*ops).reshape(net.out_features, net.in_features)
    return dw


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
    ops = _operands(net)
    if x.dtype != ops[0].dtype:
        x = x.to(ops[0].dtype)
    if net.kernel is not None:
        return net.kernel.push(ops, x)
    chain = _chain(net)
    if chain is not None:
        return _push_chain(chain, ops, x)
    lead = tuple(x.shape[:-1])
    tokens = math.prod(lead)
    xt = x.reshape(tokens, *net.in_shape)
    out = _push_plan(net, tokens)(xt, *ops)
    return out.reshape(*lead, net.out_features)


_Step = tuple[int, bool, list[int]]
"""One matrix of a chain: operand index, whether it is stored ``next x current`` (as
``F.linear`` wants it), and the indices of the vectors scaling its output index."""


def _chain(net: Network) -> tuple[_Step, ...] | None:
    """The network as a chain ``x -> M_1 -> diag(v) -> M_2 ...`` (LoRA, VeRA), else None."""
    return _chain_of(net.subscripts, net.in_subscripts, net.out_subscripts)


@functools.lru_cache(maxsize=256)
def _chain_of(subs: tuple[str, ...], in_sub: str, out_sub: str) -> tuple[_Step, ...] | None:
    """:func:`_chain` from the subscripts alone (fixed per adapter, so cached)."""
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
        steps.append((i, stored_next_first, vectors.pop(current, [])))
    leading = vectors.pop(in_sub, None)
    if vectors or leading or len(used) != len(matrices):
        return None
    return tuple(steps)  # immutable: the cache shares it


def _push_chain(chain: tuple[_Step, ...], ops: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``F.linear`` through the chain, as HF PEFT's LoRA/VeRA layers compute.

    A frozen vector is folded into its matrix (a pass over ``r x in`` numbers instead of
    ``tokens x r``); a trainable one scales the activations, so its gradient is a cheap
    reduction and not the weight gradient of the folded matrix (a GEMM over the tokens).
    """
    h = x
    grad = torch.is_grad_enabled()
    for i, stored_next_first, vector_ids in chain:
        m = ops[i] if stored_next_first else ops[i].T
        trainable = [v for v in vector_ids if grad and ops[v].requires_grad]
        for v in vector_ids:
            if v not in trainable:
                m = ops[v][:, None] * m
        h = F.linear(h, m)
        for v in trainable:
            h = h * ops[v]
    return h


def path_costs(
    net: Network,
    tokens: int,
    fused: bool,
    backward: bool = False,
    build_rate: float = 1.0,
    push_rate: float = 1.0,
) -> dict[Path, float]:
    """Estimated extra cost of each path over the frozen base layer's matmuls, in FLOPs.

    ``fused`` means the materialized ``dW`` is added to the base weight and one matmul
    serves both (no second ``2 * tokens * in * out`` product). ``backward`` adds the cost
    of the backward pass when the adapter trains: materializing then pays for the gradient
    of ``dW`` (``2 * tokens * in * out``), the backward of its construction and, unfused,
    a second input-gradient product; pushing pays about its forward again (the input
    gradient), twice when matrices train (LoRA's weight gradients).

    ``build_rate`` and ``push_rate`` weigh the FLOPs of building ``dW`` and of the push
    path against those of the matmuls with the activations, when they run at other speeds:
    on a GPU with a bfloat16 base, ``dW`` is built in TF32 (half the speed of bf16 tensor
    cores) and the push runs in float32 (~14x slower per FLOP on an H100). ``push_rate``
    applies to dense pushes (TeRA's core, HiRA's base weight); a chain of thin matrices
    (LoRA, VeRA) is bound by memory traffic, not by FLOPs, and keeps a rate of one (the
    choice HF PEFT makes for them: they push in float32 whatever the base).

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
    size = net.in_features * net.out_features
    shapes = net.shapes()
    if net.kernel is not None:
        make, make_backward = net.kernel.flops(shapes, False), net.kernel.flops(shapes, True)
    else:
        make = _dw_plan(net).flops
        make_backward = 2 * make
    materialize = build_rate * make + (size if fused else 2 * tokens * size)
    if backward:
        materialize += build_rate * make_backward + 2 * tokens * size
        materialize += 0 if fused else 2 * tokens * size
    if net.kernel is not None:
        push_flops = net.kernel.push_flops(shapes, tokens, False)
        push_flops += net.kernel.push_flops(shapes, tokens, True) if backward else 0
    else:
        push_flops = _push_plan(net, tokens).flops
        if backward:
            # the input gradient retraces the forward; trainable matrices (LoRA) add as much
            # again for their weight gradients, trainable vectors only cheap reductions
            trains_matrix = any(op.requires_grad and op.ndim >= 2 for op in net.operands)
            push_flops *= 3 if trains_matrix else 2
    thin = net.kernel is None and _chain(net) is not None
    return {"materialize": materialize, "push": (1.0 if thin else push_rate) * push_flops}


@_not_compiled
def choose_path(
    net: Network,
    tokens: int,
    fused: bool,
    backward: bool = False,
    build_rate: float = 1.0,
    push_rate: float = 1.0,
) -> Path:
    """The cheaper evaluation for ``tokens`` rows of input (ties go to materializing).

    The arguments after ``tokens`` are those of :func:`path_costs`.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.engine import Network, choose_path
    >>> A, B = torch.ones(2, 64), torch.ones(64, 2)   # LoRA-like, rank 2
    >>> net = Network(("ri", "or"), (A, B), "i", "o", (64,), (64,))
    >>> choose_path(net, tokens=4, fused=False), choose_path(net, tokens=4096, fused=True)
    ('push', 'materialize')
    """
    key = (_structure(net), tokens, fused, backward, build_rate, push_rate)
    path = _DECISIONS.get(key)
    if path is None:
        costs = path_costs(net, max(tokens, 1), fused, backward, build_rate, push_rate)
        path = "materialize" if costs["materialize"] <= costs["push"] else "push"
        if len(_DECISIONS) >= _DECISIONS_MAX:
            _DECISIONS.clear()
        _DECISIONS[key] = path
    return path


_DECISIONS: dict[tuple[object, ...], Path] = {}
_DECISIONS_MAX = 4096
"""Decisions of :func:`choose_path` by network structure and arguments: planning costs
tens of microseconds per call, which a small layer (or a GPU, waiting on Python) feels."""


def _structure(net: Network) -> tuple[object, ...]:
    """Everything :func:`path_costs` reads from a network: its shapes, not its values."""
    return (
        net.subscripts,
        net.in_subscripts,
        net.out_subscripts,
        net.shapes(),
        net.kernel,
        tuple(op.requires_grad and op.ndim >= 2 for op in net.operands),
    )

"""``AdapterLinear``: wraps a linear layer and evaluates its adapter through the engine.

Supports ``torch.nn.Linear`` (weight ``out x in``) and Hugging Face's GPT-2 style
``Conv1D`` (weight ``in x out``); anything else is rejected with a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from tera.adapters import quantized
from tera.adapters.base import Adapter
from tera.adapters.engine import EvalPath, Evaluator, LayerEngine, _not_compiled, build_evaluator
from tera.adapters.factors import SharedFactors
from tera.adapters.policy import (
    FLOAT32_COST,
    HALF_DTYPES,
    TF32_COST,
    ExecutionPolicy,
    execution_policy,
)
from tera.errors import AdapterStateError, DTypeError, MergeError, ShapeError, TargetError

__all__ = [
    "BASE_ADAPTER",
    "FLOAT32_COST",
    "HALF_DTYPES",
    "TF32_COST",
    "AdapterLinear",
    "ExecutionPolicy",
    "RowAdapters",
    "execution_policy",
    "is_conv1d",
    "linear_shape",
    "module_weight",
]

EnginePath = Literal["auto", "materialize", "push"]

BANK_CACHE = 4
"""Stacked banks an adapted layer keeps per batch composition (the most recent ones).

Inference reuses a bank while its adapters' tensors are unchanged (every decoding step of a
``generate`` call, or repeated batches of the same adapters); a new composition stacks its
adapters' tensors again (cheap for TeRA's and VeRA's vectors, a copy of the batch's LoRA
matrices for LoRA) and evicts the oldest.
"""

BASE_ADAPTER = "__base__"
"""The name a row of a mixed batch gives to get the base model's output (PEFT's)."""


@dataclass
class RowAdapters:
    """Which adapter each leading row of a mixed batch uses (built once per model call).

    Attributes
    ----------
    names : tuple of str
        The distinct adapter names of the batch, in order of first appearance.
    index : torch.Tensor
        ``(rows,)``: row ``b`` uses ``names[index[b]]`` (a CPU ``int64`` tensor).

    Examples
    --------
    >>> from tera.adapters.layer import RowAdapters
    >>> batch = RowAdapters.from_names(["alice", "__base__", "alice"])
    >>> batch.names, batch.index.tolist()
    (('alice', '__base__'), [0, 1, 0])
    """

    names: tuple[str, ...]
    index: torch.Tensor
    _cache: dict[tuple[object, ...], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_names(cls, names: Sequence[str]) -> RowAdapters:
        """From one adapter name per row."""
        distinct = tuple(dict.fromkeys(names))
        position = {n: i for i, n in enumerate(distinct)}
        return cls(distinct, torch.tensor([position[n] for n in names], dtype=torch.long))

    @property
    def rows(self) -> int:
        """Number of rows named."""
        return int(self.index.shape[0])

    def rows_of(self, positions: Sequence[int], rows: int, device: torch.device) -> torch.Tensor:
        """Indices of the rows using any of ``names[positions]`` (cached per device).

        ``rows`` may be a multiple of :attr:`rows`: generation with several beams or
        return sequences repeats every prompt's row (``repeat_interleave``).
        """
        key = ("rows", tuple(positions), rows, device)
        found = self._cache.get(key)
        if found is None:
            index = self.expanded(rows)
            mask = torch.zeros(len(self.names), dtype=torch.bool)
            mask[list(positions)] = True
            found = torch.nonzero(mask[index]).reshape(-1).to(device)
            self._cache[key] = found
        return cast(torch.Tensor, found)

    def expanded(self, rows: int) -> torch.Tensor:
        """``index`` for ``rows`` leading rows (each name repeated ``rows / self.rows``)."""
        if rows == self.rows:
            return self.index
        if rows % self.rows:
            raise ShapeError(
                f"adapter_names gives {self.rows} names but the layer sees {rows} rows; give "
                "one name per row of the batch"
            )
        return self.index.repeat_interleave(rows // self.rows)


def is_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's ``Conv1D`` (a linear layer storing its weight as ``in x out``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def module_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor of a layer (typed for the checker)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TargetError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def linear_shape(module: nn.Module, name: str = "?") -> tuple[int, int]:
    """``(in_features, out_features)`` of a supported linear layer, else :class:`TargetError`.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters.layer import linear_shape
    >>> linear_shape(nn.Linear(3, 5))
    (3, 5)
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        rows, cols = module_weight(module).shape
        return int(rows), int(cols)
    raise TargetError(
        f"module '{name}' is a {type(module).__name__}; adapters wrap torch.nn.Linear (or "
        "transformers' Conv1D) layers only: narrow target_modules to the Linear layers"
    )


class AdapterLinear(nn.Module):
    """A linear layer plus an adapter: ``y = x (W0 + dW)^T + b``.

    Attributes
    ----------
    base_layer : nn.Module
        The wrapped layer (never modified unless merged).
    adapter : Adapter
        The adapter (trainable parameters and a reference to the shared factors).
    path : str
        How the engine evaluates the adapter: ``"materialize"``, ``"push"``, or ``"auto"``
        (the default), which picks the cheaper for each call's token count.
    last_path : str or None
        The path the last forward call took (``None`` before the first call).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig
    >>> from tera.adapters.factors import SharedFactors
    >>> from tera.adapters.layer import AdapterLinear
    >>> from tera.adapters.lora import LoRA
    >>> base = nn.Linear(8, 4)
    >>> layer = AdapterLinear(base, LoRA(LoRAConfig(r=2), 8, 4, SharedFactors(), "l"))
    >>> x = torch.randn(3, 8)
    >>> torch.equal(layer(x), base(x))   # B = 0: the adapter starts as a no-op
    True
    """

    base_layer: nn.Module
    adapters: nn.ModuleDict
    dropouts: nn.ModuleDict
    tera_factors: SharedFactors

    def __init__(
        self,
        base_layer: nn.Module,
        adapter: Adapter,
        dropout: float = 0.0,
        shared: SharedFactors | None = None,
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        in_features, out_features = linear_shape(base_layer)
        weight = module_weight(base_layer)
        # -- quantized-base hook (tera.adapters.quantized): None for an ordinary layer --
        self.quantization = quantized.prepare_target(base_layer)
        if self.quantization is None and not weight.is_floating_point():
            raise DTypeError(
                f"cannot adapt a layer with {weight.dtype} weights; adapters need floating "
                "weights (dequantize the model or load it in float16/bfloat16/float32)"
            )
        self.base_layer = base_layer
        # the model-wide SharedFactors, registered here so .to() reaches it from any root
        self.tera_factors = shared if shared is not None else adapter.shared
        self.adapters = nn.ModuleDict()
        self.dropouts = nn.ModuleDict()
        self.in_features, self.out_features = in_features, out_features
        self.merged = False
        self.disabled = False
        self.path: EnginePath = "auto"
        self.last_path: EvalPath | None = None
        self.active_adapter = adapter_name
        self.row_adapters: RowAdapters | None = None
        self._original_weight: torch.Tensor | None = None
        self._merged_adapter: str | None = None
        # decided once: the layer's kind, and per adapter the evaluator it declares (its
        # network validated and planned from shapes only: this works on the meta device too)
        self._conv1d = is_conv1d(base_layer)
        # a quantized base (bitsandbytes, torchao) is never fused: quantized-base hook
        self._fusable_layer = (
            type(base_layer) is nn.Linear or self._conv1d
        ) and self.quantization is None
        self._evaluators: dict[str, Evaluator] = {}
        self._shared_evaluators: dict[tuple[object, ...], Evaluator] = {}
        self._no_dropout = nn.Identity()  # one for every adapter without dropout
        self._engines: dict[str, tuple[LayerEngine, tuple[torch.dtype, torch.device]]] = {}
        self._banks: dict[tuple[object, ...], Any] = {}
        self.add_adapter(adapter_name, adapter, dropout)

    # -- the adapters it holds -------------------------------------------------------------
    @property
    def adapter(self) -> Adapter:
        """The active adapter (:attr:`active_adapter`)."""
        try:
            return self.adapters[self.active_adapter]  # type: ignore[return-value]
        except KeyError:
            raise AdapterStateError(
                f"this layer has no adapter named {self.active_adapter!r}; it holds "
                f"{list(self.adapters)}"
            ) from None

    @property
    def dropout(self) -> nn.Module:
        """The active adapter's dropout on the input."""
        return self.dropouts[self.active_adapter]

    @property
    def _has_dropout(self) -> bool:
        return not isinstance(self.dropouts[self.active_adapter], nn.Identity)

    @property
    def _evaluator(self) -> Evaluator:
        return self._evaluators[self.active_adapter]

    def add_adapter(self, name: str, adapter: Adapter, dropout: float = 0.0) -> None:
        """Hold ``adapter`` under ``name`` too (the active adapter does not change)."""
        if name in self.adapters:
            raise AdapterStateError(f"this layer already holds an adapter named {name!r}")
        if (adapter.in_features, adapter.out_features) != (self.in_features, self.out_features):
            raise ShapeError(
                f"adapter {name!r} is {adapter.in_features} -> {adapter.out_features} but the "
                f"layer is {self.in_features} -> {self.out_features}"
            )
        net = adapter.network(self.base_weight())
        # an evaluator depends on the network's shapes only: adapters of one kind and
        # scheme on this layer share one (validated and planned once)
        key = (type(adapter), net.subscripts, net.shapes(), net.in_shape, net.out_shape)
        evaluator = self._shared_evaluators.get(key)
        if evaluator is None:
            evaluator = build_evaluator(net)
            self._shared_evaluators[key] = evaluator
        self.adapters[name] = adapter
        self.dropouts[name] = nn.Dropout(dropout) if dropout > 0 else self._no_dropout
        self._evaluators[name] = evaluator
        self._banks.clear()

    def delete_adapter(self, name: str) -> None:
        """Drop the adapter ``name`` (its frozen factors stay with the model's others)."""
        if name not in self.adapters:
            raise AdapterStateError(f"this layer holds no adapter named {name!r}")
        if self.merged and self._merged_adapter == name:
            raise AdapterStateError(f"adapter {name!r} is merged into this layer; unmerge() first")
        del self.adapters[name]
        del self.dropouts[name]
        self._evaluators.pop(name, None)
        self._engines.pop(name, None)
        self._banks.clear()

    def adapter_parameter_count(self) -> int:
        """Number of the adapter's own parameters on this layer."""
        return sum(p.numel() for p in self.adapter.parameters())

    # -- weights ---------------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The base weight as ``out x in`` (a view; transposed for ``Conv1D``).

        Called on every forward: the layer's kind was checked when it was wrapped. A
        quantized base gives its dequantized weight (a copy).
        """
        if self.quantization is not None:  # quantized-base hook: dequantized, a copy
            return quantized.dequantize_weight(self.base_layer)
        w: torch.Tensor = self.base_layer.weight  # type: ignore[assignment]
        return w.T if self._conv1d else w

    @_not_compiled
    def engine(
        self, base_weight: torch.Tensor | None = None, adapter_name: str | None = None
    ) -> LayerEngine:
        """The :class:`~tera.adapters.engine.LayerEngine` of an adapter (the active one).

        Built on first use and again only when the base weight moves to another dtype or
        device (the execution policy depends on them; the evaluator does not).
        """
        name = self.active_adapter if adapter_name is None else adapter_name
        w0 = self.base_weight() if base_weight is None else base_weight
        found = self._engines.get(name)
        if found is None or found[1] != (w0.dtype, w0.device):
            adapter: Adapter = self.adapters[name]  # type: ignore[assignment]
            # execution_policy is looked up here, in this module (tests force a policy)
            engine = LayerEngine(
                adapter.network(w0), execution_policy(w0), evaluator=self._evaluators[name]
            )
            self._engines[name] = (engine, (w0.dtype, w0.device))
            return engine
        return found[0]

    def delta_weight(
        self, dtype: torch.dtype | None = None, adapter_name: str | None = None
    ) -> torch.Tensor:
        """``dW`` as ``out x in``, in float32 (float64 for a float64 model, or ``dtype``).

        Of the active adapter, or of ``adapter_name``.
        """
        name = self.active_adapter if adapter_name is None else adapter_name
        adapter: Adapter = self.adapters[name]  # type: ignore[assignment]
        w0 = self.base_weight()
        engine = self.engine(w0, name)
        return engine.evaluator.delta_weight(engine.operands(adapter.operands(w0), dtype))

    @torch.no_grad()
    def delta_rank(self) -> int:
        """Numerical rank of ``dW``, evaluated in float64.

        TeRA's update is a product of many small Kronecker factors and can be so poorly
        conditioned (1e9 for a (1024 | 4, 4, 4, 4, 4) layer) that float32 rounding alone
        hides a fifth of its rank; float64 measures the rank the algebra gives.
        """
        return int(torch.linalg.matrix_rank(self.delta_weight(torch.float64)))

    # -- forward ---------------------------------------------------------------------------
    def _can_fuse(self, policy: ExecutionPolicy) -> bool:
        no_dropout = not self._has_dropout or not self.training
        return self._fusable_layer and no_dropout and policy.fuse

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus the adapter's, evaluated on the cheaper engine path."""
        rows = self.row_adapters
        if rows is not None and not self.disabled:
            return self._forward_rows(x, rows, *args, **kwargs)
        if self.disabled or self.merged or self.active_adapter not in self.adapters:
            out: torch.Tensor = self.base_layer(x, *args, **kwargs)
            return out
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(
                f"input of shape {tuple(x.shape)} does not fit this layer: its last dimension "
                f"must be in_features={self.in_features}"
            )
        # quantized-base hook: HiRA gets W0 dequantized, the others a stand-in
        w0 = self.base_weight() if self.quantization is None else quantized.forward_weight(self, x)
        engine = self.engine(w0)
        raw = self.adapter.operands(w0)
        tokens = x.numel() // self.in_features if self.in_features else 0
        policy = engine.policy
        fused = self._can_fuse(policy)
        backward = torch.is_grad_enabled() and any(op.requires_grad for op in raw)
        path: EvalPath = (
            engine.choose(tokens, fused, backward) if self.path == "auto" else self.path
        )
        self.last_path = path
        ops = engine.operands(raw)
        if path == "materialize":
            dw = engine.delta_weight(ops)  # TF32 or not: the engine's policy
            if fused:
                bias = getattr(self.base_layer, "bias", None)
                # summed in dW's dtype and rounded once: the weight merge() would write
                weight = dw + w0 if w0.dtype == dw.dtype else (dw + w0).to(w0.dtype)
                return F.linear(x, weight, bias)
            result: torch.Tensor = self.base_layer(x, *args, **kwargs)
            x_in = self.dropout(x)
            dtype = policy.apply_dtype or dw.dtype
            return result + F.linear(x_in.to(dtype), dw.to(dtype)).to(result.dtype)
        result = self.base_layer(x, *args, **kwargs)
        x_in = self.dropout(x)
        y = engine.push(ops, x_in)  # any leading dims: autograd sums the grads of x in place
        return result + y.to(result.dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> AdapterLinear:
        self._banks = {k: v for k, v in self._banks.items() if k[0] == "plan"}
        return cast(AdapterLinear, super()._apply(fn, recurse))  # type: ignore[no-untyped-call]

    # -- mixed batches: one adapter per row ----------------------------------------------
    def _forward_rows(
        self, x: torch.Tensor, batch: RowAdapters, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Row ``b`` of ``x`` through the adapter ``batch`` names for it (or none).

        Adapters that differ only in their trainable tensors (one kind, scheme and seed:
        the same frozen operands) form a *bank*: their tensors are stacked and an evaluator
        with ``push_rows`` (TeRA, VeRA, LoRA) runs the whole bank in one pass. Any other
        adapter (HiRA, whose ``dW`` depends on ``W0``) runs on its own rows, once per
        adapter. Rows naming ``"__base__"``, or an adapter this layer does not hold, get
        the base layer's output.
        """
        if self.merged:
            raise AdapterStateError(
                "a merged model cannot serve a mixed batch (its weights hold one adapter); "
                "call unmerge() first"
            )
        if x.shape[-1:] != (self.in_features,) or x.ndim < 2:
            raise ShapeError(
                f"input of shape {tuple(x.shape)} does not fit a mixed batch on this layer: "
                f"(rows, ..., in_features={self.in_features}) with one adapter name per row"
            )
        result: torch.Tensor = self.base_layer(x, *args, **kwargs)
        n_rows = int(x.shape[0])
        index = batch.expanded(n_rows)  # checks the row count
        x3 = x.reshape(n_rows, -1, self.in_features)
        out3 = result.reshape(n_rows, -1, self.out_features)
        w0 = self.base_weight() if self.quantization is None else None
        groups: list[tuple[list[int], list[str], tuple[object, ...] | None]] = []
        for positions, names, bank in self._plan(batch):
            if bank is not None and self._one_by_one(batch, positions, names, x3, w0):
                groups += [([p], [n], None) for p, n in zip(positions, names, strict=True)]
            else:
                groups.append((positions, names, bank))
        for positions, names, bank in groups:
            sel = batch.rows_of(positions, n_rows, x.device)
            if sel.numel() == 0:
                continue
            whole = sel.numel() == n_rows
            xs = x3 if whole else x3.index_select(0, sel)
            if bank is not None:
                ops, stacked, evaluator, dropout = self._bank_operands(names, bank, xs, w0)
                local = self._local_index(batch, positions, index, x.device)
                xin = dropout(xs)
                ys = evaluator.push_rows(ops, stacked, xin.to(ops[0].dtype), local)  # type: ignore[attr-defined]
            else:
                ys = self._forward_one(names[0], xs, w0)
            ys = ys.to(out3.dtype)
            out3 = out3 + ys if whole else out3.index_add(0, sel, ys)
        return out3.reshape(result.shape)

    def _one_by_one(
        self,
        batch: RowAdapters,
        positions: list[int],
        names: list[str],
        x3: torch.Tensor,
        w0: torch.Tensor | None,
    ) -> bool:
        """Whether a bank costs fewer FLOPs run adapter by adapter than in one pass.

        One pass pushes every row through the shared factors; alone, an adapter with many
        tokens (a long prefill of few adapters) materializes its ``dW`` once instead. The
        engine prices both from the evaluator's FLOP counts (decided once per call).
        """
        if self.path != "auto":  # forced: "push" runs the bank in one pass
            return self.path == "materialize"
        tokens = int(x3.shape[1])
        backward = torch.is_grad_enabled() and any(
            p.requires_grad for n in names for p in self.adapters[n].parameters()
        )
        key = ("one-by-one", id(self), tuple(positions), int(x3.shape[0]), tokens, backward)
        found = batch._cache.get(key)
        if found is None:
            counts = torch.bincount(batch.expanded(int(x3.shape[0])), minlength=len(batch.names))
            engine = self.engine(w0 if w0 is not None else self._stand_in(x3), names[0])
            total = sum(int(counts[p]) for p in positions) * tokens
            one_pass = engine.costs(total, False, backward)["push"]
            alone, materializes = 0.0, False
            for p in positions:
                n_tokens = int(counts[p]) * tokens
                if n_tokens:
                    costs = engine.costs(n_tokens, False, backward)
                    alone += min(costs.values())
                    materializes |= costs["materialize"] < costs["push"]
            # pushing is linear in the tokens: adapter by adapter only pays off where some
            # adapter materializes (else the same FLOPs in more, smaller calls)
            found = materializes and alone < one_pass
            batch._cache[key] = found
        return bool(found)

    def _plan(
        self, batch: RowAdapters
    ) -> list[tuple[list[int], list[str], tuple[object, ...] | None]]:
        """The batch's adapters grouped into banks (cached per set of names)."""
        key = ("plan", batch.names)
        plan = self._banks.get(key)
        if plan is not None:
            return plan  # type: ignore[no-any-return]
        groups: dict[tuple[object, ...], tuple[list[int], list[str]]] = {}
        loners: list[tuple[list[int], list[str], tuple[object, ...] | None]] = []
        for position, name in enumerate(batch.names):
            if name == BASE_ADAPTER or name not in self.adapters:
                continue
            bank = self._bank_key(name)
            if bank is None:
                loners.append(([position], [name], None))
            else:
                entry = groups.setdefault(bank, ([], []))
                entry[0].append(position)
                entry[1].append(name)
        plan = [(p, n, b) for b, (p, n) in groups.items()] + loners
        self._banks[key] = plan
        return plan

    def _bank_key(self, name: str) -> tuple[object, ...] | None:
        """What adapters must share to be run as one bank; None: run this one on its own."""
        adapter: Adapter = self.adapters[name]  # type: ignore[assignment]
        evaluator = self._evaluators[name]
        if adapter.uses_base_weight or not hasattr(evaluator, "push_rows"):
            return None
        own = {id(p) for p in adapter.parameters()}
        ops = adapter.operands(torch.empty(0))
        frozen = tuple(id(op) for op in ops if id(op) not in own)
        shapes = tuple((id(op) in own, tuple(op.shape)) for op in ops)
        net_scale = adapter.network(torch.empty(0)).scale
        dropout = self.dropouts[name]
        p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
        return (type(evaluator), frozen, shapes, net_scale, p)

    def _bank_operands(
        self,
        names: list[str],
        bank: tuple[object, ...],
        x: torch.Tensor,
        w0: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], list[bool], Evaluator, nn.Module]:
        """The bank's operands: its adapters' own tensors stacked (cached while unchanged)."""
        first: Adapter = self.adapters[names[0]]  # type: ignore[assignment]
        weight = w0 if w0 is not None else self._stand_in(x)
        engine = self.engine(weight, names[0])
        adapters: list[Adapter] = [self.adapters[n] for n in names]  # type: ignore[misc]
        params = [p for a in adapters for p in a.parameters()]
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        key = ("bank", tuple(names), weight.dtype, weight.device)
        versions = tuple(p._version for p in params)
        cached = None if grad else self._banks.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1], cached[2], engine.evaluator, self.dropouts[names[0]]
        own = {id(p) for p in first.parameters()}
        raw0 = first.operands(weight)
        stacked = [id(op) in own for op in raw0]
        per_adapter = [engine.operands(a.operands(weight)) for a in adapters]
        ops = [
            torch.stack([ops[i] for ops in per_adapter]) if stacked[i] else per_adapter[0][i]
            for i in range(len(raw0))
        ]
        if not grad:
            stale = [k for k in self._banks if k[0] == "bank"]
            if len(stale) >= BANK_CACHE:  # bounded: a new batch composition evicts the oldest
                del self._banks[stale[0]]
            self._banks[key] = (versions, ops, stacked)
        return ops, stacked, engine.evaluator, self.dropouts[names[0]]

    def _stand_in(self, x: torch.Tensor) -> torch.Tensor:
        """For a quantized base: an ``out x in`` zero-stride stand-in of ``W0`` (no memory)."""
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.zeros((), dtype=dtype, device=x.device).expand(
            self.out_features, self.in_features
        )

    @staticmethod
    def _local_index(
        batch: RowAdapters, positions: list[int], index: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """For the selected rows: the position of each row's adapter within its bank."""
        key = ("local", tuple(positions), int(index.shape[0]), device)
        found = batch._cache.get(key)
        if found is None:
            lookup = torch.full((len(batch.names),), -1, dtype=torch.long)
            lookup[list(positions)] = torch.arange(len(positions))
            local = lookup[index]
            found = local[local >= 0].to(device)  # the rows of sel, in order
            batch._cache[key] = found
        return cast(torch.Tensor, found)

    def _forward_one(self, name: str, x: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
        """One adapter's ``x @ dW.T`` on its own rows (the engine's cheaper path)."""
        adapter: Adapter = self.adapters[name]  # type: ignore[assignment]
        if w0 is None:  # quantized-base hook: HiRA gets W0 dequantized
            w0 = (
                quantized.dequantize_weight(self.base_layer).to(x.dtype)
                if adapter.uses_base_weight
                else self._stand_in(x)
            )
        engine = self.engine(w0, name)
        raw = adapter.operands(w0)
        backward = torch.is_grad_enabled() and any(op.requires_grad for op in raw)
        tokens = x.numel() // self.in_features if self.in_features else 0
        path = engine.choose(tokens, False, backward) if self.path == "auto" else self.path
        ops = engine.operands(raw)
        xin = self.dropouts[name](x)
        if path == "materialize":
            dw = engine.delta_weight(ops)
            dtype = engine.policy.apply_dtype or dw.dtype
            return F.linear(xin.to(dtype), dw.to(dtype))
        return engine.push(ops, xin)

    # -- merging ---------------------------------------------------------------------------
    def _write_base(self, new_oi: torch.Tensor) -> None:
        w = module_weight(self.base_layer)
        value = new_oi.T if is_conv1d(self.base_layer) else new_oi
        w.data.copy_(value.to(w.dtype))

    @torch.no_grad()
    def merge(self, keep_original: bool | None = None) -> None:
        """Add ``dW`` to the base weight (computed in float32, cast back).

        Parameters
        ----------
        keep_original : bool, optional
            Keep a copy of the base weight so :meth:`unmerge` restores it exactly; by
            default only for adapters whose ``dW`` depends on the base weight (HiRA).
        """
        if self.merged:
            raise AdapterStateError("this layer is already merged; unmerge() it first")
        if self.quantization is not None:  # quantized-base hook: requantizes, warns
            quantized.merge(self, keep_original)
            self._merged_adapter = self.active_adapter
            return
        dw = self.delta_weight()
        w0 = self.base_weight()
        merged = w0.to(dw.dtype) + dw
        if not torch.isfinite(merged).all():
            if not torch.isfinite(dw).all():
                cause = "dW holds non-finite values; check the adapter's parameters"
            else:
                cause = "the base weight already holds non-finite values; fix the base model"
            raise MergeError(
                f"merging would write NaN/inf into the base weight ({cause}); the base "
                "weight was not changed"
            )
        keep = self.adapter.uses_base_weight if keep_original is None else keep_original
        self._original_weight = module_weight(self.base_layer).detach().clone() if keep else None
        self._write_base(merged)
        self.merged = True
        self._merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self) -> None:
        """Remove ``dW`` from the base weight again."""
        if not self.merged:
            raise AdapterStateError("this layer is not merged; nothing to unmerge")
        if self.quantization is not None:  # quantized-base hook: restores the kept original
            quantized.unmerge(self)
            return
        if self._original_weight is not None:
            module_weight(self.base_layer).data.copy_(self._original_weight)
            self._original_weight = None
        elif self.adapter.uses_base_weight:
            raise AdapterStateError(
                f"a {self.adapter.kind} layer merged with keep_original=False cannot be "
                "unmerged exactly (its dW depends on the base weight)"
            )
        else:
            dw = self.delta_weight(adapter_name=self._merged_adapter)
            self._write_base(self.base_weight().to(dw.dtype) - dw)
        self.merged = False
        self._merged_adapter = None

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return (
            f"active_adapter={self.active_adapter!r}, merged={self.merged}, "
            f"disabled={self.disabled}, path={self.path!r}"
        )

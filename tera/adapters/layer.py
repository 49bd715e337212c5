"""``AdapterLinear``: a linear layer holding named adapters, evaluated through the engine.

Supports ``torch.nn.Linear`` (weight ``out x in``), Hugging Face's GPT-2 style ``Conv1D``
(weight ``in x out``) and the quantized linear layers of :mod:`tera.adapters.quantized`;
anything else is rejected with a clear error.

The layer owns what is its own: its adapters, the one decision of which base weight an
adapter's network sees (:meth:`AdapterLinear.weight_for`), one body that runs an adapter
(:meth:`AdapterLinear.run`, used by the plain forward and by each adapter of a mixed batch),
merging and unwrapping. Mixed batches are :mod:`tera.adapters.batch`'s: a call that routes
rows to adapters sets a :data:`ROW_ROUTING` router for its own thread or task (a context
variable, never state on the shared layer), which the forward hands the call to.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tera.adapters import quantized
from tera.adapters.base import Adapter
from tera.adapters.engine import (
    EvalPath,
    Evaluator,
    LayerEngine,
    _not_compiled,
    build_evaluator,
    needs_backward,
)
from tera.adapters.factors import SharedFactors
from tera.adapters.policy import (
    FLOAT32_COST,
    HALF_DTYPES,
    TF32_COST,
    ExecutionPolicy,
    execution_policy,
)
from tera.adapters.trace import record_path
from tera.errors import AdapterStateError, DTypeError, MergeError, ShapeError, TargetError

__all__ = [
    "FLOAT32_COST",
    "HALF_DTYPES",
    "ROW_ROUTING",
    "TF32_COST",
    "AdapterLinear",
    "ExecutionPolicy",
    "RowRouter",
    "execution_policy",
    "is_conv1d",
    "linear_shape",
    "module_weight",
]

EnginePath = Literal["auto", "materialize", "push"]


class RowRouter(Protocol):
    """What runs a mixed batch on a layer (:class:`tera.adapters.batch.RowRouter` does)."""

    def forward(
        self, layer: AdapterLinear, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Row ``b`` of ``x`` through the adapter the call names for it."""
        ...


ROW_ROUTING: ContextVar[RowRouter | None] = ContextVar("tera_row_routing", default=None)
"""The router of the mixed batch being computed in this thread or task (``None``: none).

Set for the duration of one model call by :func:`tera.adapters.batch.route`; a context
variable, so concurrent calls from several threads (or asyncio tasks) never see each
other's routing.
"""


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
    """A linear layer plus named adapters: ``y = x (W0 + dW)^T + b`` for the active one.

    Attributes
    ----------
    base_layer : nn.Module
        The wrapped layer (never modified unless merged).
    adapters : nn.ModuleDict
        ``name -> Adapter`` (trainable parameters and a reference to the shared factors);
        :attr:`adapter` is the active one.
    path : str
        How the engine evaluates the adapter: ``"materialize"``, ``"push"``, or ``"auto"``
        (the default), which picks the cheaper for each call's token count. The path a call
        took is not stored on the layer (threads share it): :func:`tera.adapters.trace_paths`
        records it for the calling thread.

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
        adapter: Adapter | None,
        dropout: float = 0.0,
        shared: SharedFactors | None = None,
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        in_features, out_features = linear_shape(base_layer)
        weight = module_weight(base_layer)
        self.quantization = quantized.prepare_target(base_layer)  # None: an ordinary layer
        if self.quantization is None and not weight.is_floating_point():
            raise DTypeError(
                f"cannot adapt a layer with {weight.dtype} weights; adapters need floating "
                "weights (dequantize the model or load it in float16/bfloat16/float32)"
            )
        self.base_layer = base_layer
        # the model-wide SharedFactors, registered here so .to() reaches it from any root
        if shared is None and adapter is None:
            raise AdapterStateError("a layer without an adapter needs the model's shared factors")
        self.tera_factors = shared if shared is not None else adapter.shared  # type: ignore[union-attr]
        self.adapters = nn.ModuleDict()
        self.dropouts = nn.ModuleDict()
        self.in_features, self.out_features = in_features, out_features
        self.merged = False
        self.disabled = False
        self.path: EnginePath = "auto"
        self.active_adapter = adapter_name
        self._original_weight: torch.Tensor | None = None
        self._merged_adapter: str | None = None
        # decided once: the layer's kind, and per adapter the evaluator it declares (its
        # network validated and planned from shapes only: this works on the meta device too)
        self._conv1d = is_conv1d(base_layer)
        # a quantized base (bitsandbytes, torchao) is never fused
        self._fusable_layer = (
            type(base_layer) is nn.Linear or self._conv1d
        ) and self.quantization is None
        self._evaluators: dict[str, Evaluator] = {}
        self._shared_evaluators: dict[tuple[object, ...], Evaluator] = {}
        self._no_dropout = nn.Identity()  # one for every adapter without dropout
        self._engines: dict[str, tuple[LayerEngine, tuple[torch.dtype, torch.device]]] = {}
        self.bank_cache: dict[tuple[object, ...], Any] = {}
        """What :mod:`tera.adapters.batch` derives from this layer's adapters (it owns the
        entries); emptied whenever the adapters or their device/dtype change."""
        self.row_slots: dict[object, Any] = {}
        """The banks of row adapters this layer serves (:mod:`tera.adapters.rows` owns the
        entries): adapters stored as rows of stacked tensors, not as modules."""
        if adapter is not None:  # None: a layer that serves row adapters only
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

    def evaluator(self, adapter_name: str) -> Evaluator:
        """The evaluator an adapter's network declared (shared by adapters of one scheme)."""
        return self._evaluators[adapter_name]

    def evaluator_for(self, adapter: Adapter) -> Evaluator:
        """The evaluator of ``adapter``'s network on this layer (built once per scheme).

        An evaluator depends on the network's shapes only: adapters of one kind and scheme
        on this layer share one (validated and planned once).
        """
        net = adapter.network(self.base_weight())
        key = (type(adapter), net.subscripts, net.shapes(), net.in_shape, net.out_shape)
        evaluator = self._shared_evaluators.get(key)
        if evaluator is None:
            evaluator = build_evaluator(net)
            self._shared_evaluators[key] = evaluator
        return evaluator

    def add_adapter(self, name: str, adapter: Adapter, dropout: float = 0.0) -> None:
        """Hold ``adapter`` under ``name`` too (the active adapter does not change)."""
        if name in self.adapters:
            raise AdapterStateError(f"this layer already holds an adapter named {name!r}")
        if (adapter.in_features, adapter.out_features) != (self.in_features, self.out_features):
            raise ShapeError(
                f"adapter {name!r} is {adapter.in_features} -> {adapter.out_features} but the "
                f"layer is {self.in_features} -> {self.out_features}"
            )
        evaluator = self.evaluator_for(adapter)
        self.adapters[name] = adapter
        self.dropouts[name] = nn.Dropout(dropout) if dropout > 0 else self._no_dropout
        self._evaluators[name] = evaluator
        self.bank_cache.clear()

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
        self.bank_cache.clear()

    def adapter_parameter_count(self) -> int:
        """Number of the adapter's own parameters on this layer."""
        return sum(p.numel() for p in self.adapter.parameters())

    # -- weights ---------------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The base weight as ``out x in`` (a view; transposed for ``Conv1D``).

        A quantized base gives its dequantized weight (a copy).
        """
        if self.quantization is not None:
            return quantized.dequantize_weight(self.base_layer)
        w: torch.Tensor = self.base_layer.weight  # type: ignore[assignment]
        return w.T if self._conv1d else w

    def weight_for(self, adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
        """The ``out x in`` weight an adapter's network (and policy) sees in a forward call.

        The one place this is decided: the base weight itself (a view) on an ordinary
        layer; on a quantized base the dequantized ``W0`` (once per call) for an adapter
        whose ``dW`` depends on it (HiRA), else a zero-stride stand-in of the activations'
        dtype and device (no memory, no dequantization: the values are never read).
        """
        if self.quantization is None:
            return self.base_weight()
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if adapter.uses_base_weight:
            return quantized.dequantize_weight(self.base_layer).to(dtype)
        return torch.zeros((), dtype=dtype, device=x.device).expand(
            self.out_features, self.in_features
        )

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

    # -- the engine's decisions (the forced path is honoured here only) ------------------
    def choose(self, engine: LayerEngine, tokens: int, fused: bool, backward: bool) -> EvalPath:
        """The path for a call of ``tokens`` rows: :attr:`path` if forced, else the engine's."""
        if self.path != "auto":
            return self.path
        return engine.choose(tokens, fused, backward)

    def split_bank(self, engine: LayerEngine, tokens: Sequence[int], backward: bool) -> bool:
        """Whether a bank of adapters (``tokens`` each) runs adapter by adapter.

        A forced ``"push"`` runs it in one pass, a forced ``"materialize"`` adapter by
        adapter; ``"auto"`` asks the engine (:meth:`LayerEngine.split_bank`).
        """
        if self.path != "auto":
            return self.path == "materialize"
        return engine.split_bank(tokens, backward)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus the active adapter's, evaluated on the cheaper engine path.

        Inside a mixed batch (:func:`tera.adapters.batch.route`), each row runs its own
        adapter instead.
        """
        router = ROW_ROUTING.get()
        if router is not None and not self.disabled:
            return router.forward(self, x, *args, **kwargs)
        if self.disabled or self.merged or self.active_adapter not in self.adapters:
            out: torch.Tensor = self.base_layer(x, *args, **kwargs)
            return out
        if x.shape[-1:] != (self.in_features,):
            raise ShapeError(
                f"input of shape {tuple(x.shape)} does not fit this layer: its last dimension "
                f"must be in_features={self.in_features}"
            )
        name = self.active_adapter
        w0 = self.weight_for(self.adapter, x)
        return self.run(name, x, w0, base=(args, kwargs))

    def run(
        self,
        name: str,
        x: torch.Tensor,
        w0: torch.Tensor,
        base: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> torch.Tensor:
        """Run adapter ``name`` on ``x``: :meth:`run_with` its engine, operands and dropout.

        With ``base`` (the base layer's extra arguments) the result is the base output
        plus the adapter's, and ``W0 + dW`` may be fused into one matmul when the policy
        allows; without, the adapter's ``x @ dW.T`` alone (the rows of a mixed batch).
        ``w0`` is :meth:`weight_for`'s.
        """
        adapter: Adapter = self.adapters[name]  # type: ignore[assignment]
        engine = self.engine(w0, name)
        return self.run_with(engine, adapter.operands(w0), self.dropouts[name], x, w0, base)

    def run_with(
        self,
        engine: LayerEngine,
        raw: list[torch.Tensor],
        dropout: nn.Module,
        x: torch.Tensor,
        w0: torch.Tensor,
        base: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> torch.Tensor:
        """The one body of every forward path: one adapter's operands ``raw`` on ``x``.

        :meth:`run` gives a held adapter's; a row adapter (:mod:`tera.adapters.rows`)
        gives the tensors of its row. The path (materialize or push) is :meth:`choose`'s.
        """
        tokens = x.numel() // self.in_features if self.in_features else 0
        policy = engine.policy
        no_dropout = isinstance(dropout, nn.Identity) or not self.training
        fused = base is not None and self._fusable_layer and no_dropout and policy.fuse
        path = self.choose(engine, tokens, fused, needs_backward(raw))
        if base is not None:
            record_path(self, path)
        ops = engine.operands(raw)
        if path == "materialize":
            dw = engine.delta_weight(ops)  # TF32 or not: the engine's policy
            if fused:
                bias = getattr(self.base_layer, "bias", None)
                # summed in dW's dtype and rounded once: the weight merge() would write
                weight = dw + w0 if w0.dtype == dw.dtype else (dw + w0).to(w0.dtype)
                return F.linear(x, weight, bias)
            dtype = policy.apply_dtype or dw.dtype
            y = F.linear(dropout(x).to(dtype), dw.to(dtype))
        else:
            y = engine.push(ops, dropout(x))  # any leading dims: autograd sums x's grads
        if base is None:
            return y
        result: torch.Tensor = self.base_layer(x, *base[0], **base[1])
        return result + y.to(result.dtype)

    def _apply(self, fn: Any, recurse: bool = True) -> AdapterLinear:
        self.bank_cache.clear()
        return super()._apply(fn, recurse)  # type: ignore[no-any-return, no-untyped-call]

    # -- merging ---------------------------------------------------------------------------
    def _write_base(self, new_oi: torch.Tensor) -> None:
        w = module_weight(self.base_layer)
        value = new_oi.T if is_conv1d(self.base_layer) else new_oi
        w.data.copy_(value.to(w.dtype))

    @torch.no_grad()
    def merge(self, keep_original: bool | None = None) -> None:
        """Add ``dW`` to the base weight (computed in float32, cast back).

        On a quantized base the weight is dequantized, ``dW`` added and the sum
        requantized, with a :class:`~tera.adapters.quantized.QuantizedMergeWarning` stating
        the error that introduced.

        Parameters
        ----------
        keep_original : bool, optional
            Keep a copy of the base weight so :meth:`unmerge` restores it exactly; by
            default only for adapters whose ``dW`` depends on the base weight (HiRA), and
            always for a quantized base (the original is the small quantized layer).
        """
        if self.merged:
            raise AdapterStateError("this layer is already merged; unmerge() it first")
        dw = self.delta_weight()
        if self.quantization is not None:
            info = self.quantization
            merged = quantized.merged_weight(self.base_layer, dw)
            new = quantized.requantized(self.base_layer, info, merged, dw)
            info.original = self.base_layer if keep_original is None or keep_original else None
            info.requantized = True
            self.base_layer = new
        else:
            merged = self.base_weight().to(dw.dtype) + dw
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
            weight = module_weight(self.base_layer)
            self._original_weight = weight.detach().clone() if keep else None
            self._write_base(merged)
        self.merged = True
        self._merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self) -> None:
        """Remove ``dW`` from the base weight again."""
        if not self.merged:
            raise AdapterStateError("this layer is not merged; nothing to unmerge")
        if self.quantization is not None:
            self.base_layer = quantized.restore_original(self.quantization)
        elif self._original_weight is not None:
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

    @torch.no_grad()
    def unwrap(self, merge: bool, dequantize: bool = False) -> nn.Module:
        """The module that replaces this layer when its adapters are removed.

        ``merge`` merges the active adapter first (without keeping the original), else a
        merged layer is unmerged. On a quantized base, ``dequantize=True`` with ``merge``
        gives an ``nn.Linear`` holding ``W0 + dW`` in float32 (no requantization).
        """
        if merge and dequantize and self.quantization is not None:
            if self.merged:
                self.unmerge()
            merged = quantized.merged_weight(self.base_layer, self.delta_weight())
            return quantized.float_linear(self.base_layer, merged, torch.float32)
        if merge and not self.merged and self.active_adapter in self.adapters:
            self.merge(keep_original=False)
        if not merge and self.merged:
            self.unmerge()
        return self.base_layer

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return (
            f"active_adapter={self.active_adapter!r}, merged={self.merged}, "
            f"disabled={self.disabled}, path={self.path!r}"
        )

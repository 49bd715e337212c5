"""``AdapterLinear``: wraps a linear layer and evaluates its adapter through the engine.

Supports ``torch.nn.Linear`` (weight ``out x in``) and Hugging Face's GPT-2 style
``Conv1D`` (weight ``in x out``); anything else is rejected with a clear error.
"""

from __future__ import annotations

from typing import Any, Literal

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
    "FLOAT32_COST",
    "HALF_DTYPES",
    "TF32_COST",
    "AdapterLinear",
    "ExecutionPolicy",
    "execution_policy",
    "is_conv1d",
    "linear_shape",
    "module_weight",
]

EnginePath = Literal["auto", "materialize", "push"]


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
    adapter: Adapter
    dropout: nn.Module
    tera_factors: SharedFactors

    def __init__(
        self,
        base_layer: nn.Module,
        adapter: Adapter,
        dropout: float = 0.0,
        shared: SharedFactors | None = None,
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
        self.adapter = adapter
        # the model-wide SharedFactors, registered here so .to() reaches it from any root
        self.tera_factors = shared if shared is not None else adapter.shared
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.in_features, self.out_features = in_features, out_features
        self.merged = False
        self.disabled = False
        self.path: EnginePath = "auto"
        self.last_path: EvalPath | None = None
        self._original_weight: torch.Tensor | None = None
        # decided once: the layer's kind, and the evaluator the adapter declares (its network
        # validated and planned here, from shapes only: this works on the meta device too)
        self._conv1d = is_conv1d(base_layer)
        # a quantized base (bitsandbytes, torchao) is never fused: quantized-base hook
        self._fusable_layer = (
            type(base_layer) is nn.Linear or self._conv1d
        ) and self.quantization is None
        self._has_dropout = dropout > 0
        self._evaluator: Evaluator = build_evaluator(adapter.network(self.base_weight()))
        self._engine: LayerEngine | None = None
        self._engine_for: tuple[torch.dtype, torch.device] | None = None

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
    def engine(self, base_weight: torch.Tensor | None = None) -> LayerEngine:
        """The layer's :class:`~tera.adapters.engine.LayerEngine` for its base's dtype/device.

        Built on first use and again only when the base weight moves to another dtype or
        device (the execution policy depends on them; the evaluator does not).
        """
        w0 = self.base_weight() if base_weight is None else base_weight
        engine = self._engine
        if engine is None or self._engine_for != (w0.dtype, w0.device):
            # execution_policy is looked up here, in this module (tests force a policy)
            engine = LayerEngine(
                self.adapter.network(w0), execution_policy(w0), evaluator=self._evaluator
            )
            self._engine, self._engine_for = engine, (w0.dtype, w0.device)
        return engine

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dW`` as ``out x in``, in float32 (float64 for a float64 model, or ``dtype``)."""
        w0 = self.base_weight()
        engine = self.engine(w0)
        return engine.evaluator.delta_weight(engine.operands(self.adapter.operands(w0), dtype))

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
        if self.disabled or self.merged:
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
            dw = self.delta_weight()
            self._write_base(self.base_weight().to(dw.dtype) - dw)
        self.merged = False

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"merged={self.merged}, disabled={self.disabled}, path={self.path!r}"

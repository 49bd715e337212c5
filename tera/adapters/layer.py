"""``AdapterLinear``: wraps a linear layer and evaluates its adapter through the engine.

Supports ``torch.nn.Linear`` (weight ``out x in``) and Hugging Face's GPT-2 style
``Conv1D`` (weight ``in x out``); anything else is rejected with a clear error.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tera.adapters.base import Adapter
from tera.adapters.engine import Path, choose_path, delta_weight, push
from tera.adapters.factors import SharedFactors
from tera.errors import AdapterStateError, DTypeError, MergeError, ShapeError, TargetError

__all__ = ["AdapterLinear", "apply_dtype", "is_conv1d", "linear_shape", "module_weight"]

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


HALF_DTYPES = (torch.float16, torch.bfloat16)


def apply_dtype(base_weight: torch.Tensor, adapter_dtype: torch.dtype) -> torch.dtype:
    """The dtype in which a layer applies its adapter's (unfused) matmul to the activations.

    The adapter's own numbers (trainable tensors, shared factors, a materialized ``dW``)
    are at least float32 whatever the base model's dtype; this only decides the precision
    of the large product with the activations:

    * float32/float64 base: ``adapter_dtype`` (float32, or float64 for a float64 model);
    * half-precision base (bfloat16/float16) on an accelerator (CUDA, ...): the base dtype.
      There half GEMMs run 10-15x faster than float32 ones; ``dW`` is still built in
      float32 and rounded once, and the product accumulates in float32 inside the GEMM,
      as the base layer's own does;
    * half-precision base on a CPU: float32, since most CPUs emulate half GEMMs (4.5x
      slower than float32 on an AVX2 EPYC, see docs/performance.md).

    Parameters
    ----------
    base_weight : torch.Tensor
        The base layer's weight (its dtype and device decide).
    adapter_dtype : torch.dtype
        The dtype the adapter computes in (float32 or float64).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.layer import apply_dtype
    >>> apply_dtype(torch.zeros(2, dtype=torch.bfloat16), torch.float32)   # on a CPU
    torch.float32
    >>> apply_dtype(torch.zeros(2, dtype=torch.float64), torch.float64)
    torch.float64
    """
    if base_weight.dtype in HALF_DTYPES and base_weight.device.type != "cpu":
        return base_weight.dtype
    return adapter_dtype


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
        if not weight.is_floating_point():
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
        self.last_path: Path | None = None
        self._original_weight: torch.Tensor | None = None

    def adapter_parameter_count(self) -> int:
        """Number of the adapter's own parameters on this layer."""
        return sum(p.numel() for p in self.adapter.parameters())

    # -- weights ---------------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The base weight as ``out x in`` (a view; transposed for ``Conv1D``)."""
        w = module_weight(self.base_layer)
        return w.T if is_conv1d(self.base_layer) else w

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``dW`` as ``out x in``, in float32 (float64 for a float64 model, or ``dtype``)."""
        return delta_weight(self.adapter.network(self.base_weight()), dtype)

    @torch.no_grad()
    def delta_rank(self) -> int:
        """Numerical rank of ``dW``, evaluated in float64.

        TeRA's update is a product of many small Kronecker factors and can be so poorly
        conditioned (1e9 for a (1024 | 4, 4, 4, 4, 4) layer) that float32 rounding alone
        hides a fifth of its rank; float64 measures the rank the algebra gives.
        """
        return int(torch.linalg.matrix_rank(self.delta_weight(torch.float64)))

    # -- forward ---------------------------------------------------------------------------
    def _can_fuse(self) -> bool:
        fusable_layer = type(self.base_layer) is nn.Linear or is_conv1d(self.base_layer)
        no_dropout = isinstance(self.dropout, nn.Identity) or not self.training
        high_precision = module_weight(self.base_layer).dtype in (torch.float32, torch.float64)
        return fusable_layer and no_dropout and high_precision

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
        net = self.adapter.network(self.base_weight())
        tokens = x.numel() // self.in_features if self.in_features else 0
        fused = self._can_fuse()
        backward = torch.is_grad_enabled() and any(
            p.requires_grad for p in self.adapter.parameters()
        )
        path: Path = choose_path(net, tokens, fused, backward) if self.path == "auto" else self.path
        self.last_path = path
        if path == "materialize":
            dw = delta_weight(net)
            if fused:
                w0 = self.base_weight()
                bias = getattr(self.base_layer, "bias", None)
                return F.linear(x, w0 + dw.to(w0.dtype), bias)
            result: torch.Tensor = self.base_layer(x, *args, **kwargs)
            x_in = self.dropout(x)
            dtype = apply_dtype(self.base_weight(), dw.dtype)
            return result + F.linear(x_in.to(dtype), dw.to(dtype)).to(result.dtype)
        result = self.base_layer(x, *args, **kwargs)
        x_in = self.dropout(x)
        y = push(net, x_in)  # any leading dims: no reshape, so autograd sums x's grads in place
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

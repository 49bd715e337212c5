"""Adapters on quantized bases: bitsandbytes 4-/8-bit layers and torchao-quantized Linears.

A quantized target keeps its own forward (its kernels, its storage); the adapter adds its
output on top and is never fused into the quantized weight. Everything specific to
quantization lives here, as functions on modules and tensors: the adapted layer
(:class:`~tera.adapters.layer.AdapterLinear`) calls them and keeps its own state.

Supported targets
-----------------
* bitsandbytes ``Linear4bit`` (``nf4`` and ``fp4``, with or without double quantization),
  as built by ``transformers`` with ``BitsAndBytesConfig(load_in_4bit=True)``;
* bitsandbytes ``Linear8bitLt`` with int8 weights (``has_fp16_weights=False``, LLM.int8(),
  any outlier ``threshold``), as built with ``BitsAndBytesConfig(load_in_8bit=True)``;
* ``torch.nn.Linear`` whose weight torchao quantized (any torchao tensor subclass that can
  ``dequantize()``; merging back requantizes int8 weight-only ``Int8Tensor`` weights).

Dtype policy
------------
The adapter's own tensors (trainable parameters, shared factors, ``dW``) stay float32 (as
on every base). The adapter's matmul with the activations runs by the base's ordinary
:func:`~tera.adapters.policy.execution_policy`, read from the activations' dtype (the
dtype the quantized layer computes in): float32 on a CPU, the half compute dtype on an
accelerator. The adapter's output is cast to the base output's dtype and added.

HiRA needs ``W0``: it is dequantized once per forward call, which is once per training step
and layer; autograd keeps that one copy for the backward (the Hadamard product's gradient
needs it) and frees it after. Nothing is cached across steps: a persistent full-precision
copy would give back the memory the quantized base saves. LoRA, VeRA and TeRA never
dequantize in the forward.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import LoRAConfig, adapt, quantize_model, weight_bytes
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> mlp = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)), "4bit")
>>> type(mlp[0]).__name__, weight_bytes(mlp) < 64 * 72 * 4
('Linear4bit', True)
>>> x = torch.randn(2, 64)
>>> y = mlp(x)
>>> model = adapt(mlp, LoRAConfig(r=4, target_modules=["0", "2"]))
>>> torch.equal(model(x), y)   # B = 0: the adapter starts as a no-op on the 4-bit base
True
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from tera.errors import AdapterStateError, DependencyError, MergeError, ShapeError, TargetError

__all__ = [
    "QuantizedBase",
    "QuantizedMergeWarning",
    "dequantize_model",
    "dequantize_weight",
    "is_quantized",
    "keep_input_gradient",
    "quantization_of",
    "quantize_model",
    "weight_bytes",
]

Backend = Literal["bnb4", "bnb8", "torchao"]
QuantMode = Literal["4bit", "8bit"]
DEFAULT_KEEP = ("lm_head", "score", "classifier")
"""Layers :func:`quantize_model` leaves in full precision unless targeted by name: the
output heads, which ``transformers`` keeps unquantized too (and which a task may train)."""


class QuantizedMergeWarning(UserWarning):
    """Merging into a quantized weight requantized it: the message states the error."""


def _require(package: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`~tera.errors.DependencyError`."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DependencyError(
            f"{purpose} needs the optional package '{package}', which is not installed: "
            f"pip install {package}"
        ) from None


def _from_package(obj: object, package: str, *names: str) -> bool:
    """Whether ``obj``'s class (or a base) is one of ``names`` defined in ``package``."""
    return any(
        cls.__module__.split(".")[0] == package and (not names or cls.__name__ in names)
        for cls in type(obj).__mro__
    )


@dataclass
class QuantizedBase:
    """What an adapted layer knows about its quantized base.

    Attributes
    ----------
    backend : str
        ``"bnb4"`` (bitsandbytes ``Linear4bit``), ``"bnb8"`` (``Linear8bitLt``) or
        ``"torchao"`` (an ``nn.Linear`` with a torchao-quantized weight).
    scheme : str
        ``"nf4"``/``"fp4"``, ``"int8"`` or the torchao tensor class (e.g. ``"Int8Tensor"``).
    original : nn.Module or None
        The quantized base as it was before a merge with ``keep_original=True``
        (restored by unmerge).
    requantized : bool
        Whether the current base weight holds a merged adapter, requantized.
    """

    backend: Backend
    scheme: str
    original: nn.Module | None = field(default=None, repr=False)
    requantized: bool = False

    @property
    def description(self) -> str:
        """E.g. ``"bitsandbytes 4-bit nf4"``."""
        return {
            "bnb4": f"bitsandbytes 4-bit {self.scheme}",
            "bnb8": "bitsandbytes 8-bit int8",
            "torchao": f"torchao {self.scheme}",
        }[self.backend]


def quantization_of(module: nn.Module) -> QuantizedBase | None:
    """How ``module`` is quantized, or ``None`` for an ordinary layer.

    Detected from class names and modules only: neither bitsandbytes nor torchao is
    imported here, so tera works without them.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters.quantized import quantization_of
    >>> quantization_of(nn.Linear(2, 2)) is None
    True
    """
    if _from_package(module, "bitsandbytes", "Linear4bit"):
        return QuantizedBase("bnb4", str(getattr(module.weight, "quant_type", "nf4")))
    if _from_package(module, "bitsandbytes", "Linear8bitLt"):
        return QuantizedBase("bnb8", "int8")
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and _from_package(weight, "torchao"):
        return QuantizedBase("torchao", type(weight).__name__)
    return None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` is a supported quantized linear layer.

    See :func:`~tera.adapters.quantized.quantization_of`.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import is_quantized
    >>> is_quantized(nn.Linear(2, 2))
    False
    """
    return quantization_of(module) is not None


# -- checking a target ------------------------------------------------------------------------
def prepare_target(module: nn.Module, name: str = "?") -> QuantizedBase | None:
    """Check a target; ``None`` for an ordinary layer, else how it is quantized.

    The layer itself is not changed: its forward stays exactly its own.

    Raises
    ------
    TargetError
        The quantized layer is not in a state its own forward can run (a 4-bit weight not
        yet quantized, an 8-bit layer keeping float weights).
    """
    info = quantization_of(module)
    if info is None:
        return None
    layer: Any = module  # a bitsandbytes/torchao layer: duck-typed attributes
    weight = layer.weight
    if info.backend == "bnb4":
        if getattr(weight, "quant_state", None) is None or not getattr(
            weight, "bnb_quantized", False
        ):
            raise TargetError(
                f"'{name}' is a bitsandbytes Linear4bit whose weight is not quantized yet "
                f"(bitsandbytes quantizes on the first .to(device)); call model.to(device) "
                "before adapt(), or load the model with a BitsAndBytesConfig"
            )
        if not getattr(module, _KEEPS_GRADIENT, False):  # once per layer, kept on unload
            module.register_forward_pre_hook(_keep_input_gradient_hook)
            setattr(module, _KEEPS_GRADIENT, True)
    elif info.backend == "bnb8":
        if layer.state.has_fp16_weights:
            raise TargetError(
                f"'{name}' is a bitsandbytes Linear8bitLt with has_fp16_weights=True: it keeps "
                "trainable float weights and quantizes them at every forward; build it with "
                "has_fp16_weights=False (as BitsAndBytesConfig(load_in_8bit=True) does) to "
                "adapt an 8-bit base"
            )
        if weight.dtype != torch.int8:
            raise TargetError(
                f"'{name}' is a bitsandbytes Linear8bitLt whose weight is not quantized yet "
                f"({weight.dtype}; bitsandbytes quantizes on the first .to(device)); call "
                "model.to(device) before adapt(), or load the model with a BitsAndBytesConfig"
            )
    elif not callable(getattr(weight, "dequantize", None)):
        raise TargetError(
            f"'{name}' holds a torchao {type(weight).__name__} weight that cannot dequantize(); "
            "quantize it with a weight-only config (e.g. Int8WeightOnlyConfig)"
        )
    return info


_KEEPS_GRADIENT = "_tera_keeps_input_gradient"


def keep_input_gradient(module: nn.Module, x: torch.Tensor) -> bool:
    """Undo bitsandbytes' CPU repack of a 4-bit weight before a training forward.

    bitsandbytes (>= 0.49, CPUs with AVX512-BF16) rewrites a ``Linear4bit``'s weight for a
    bf16 inference kernel the first time the layer runs in eval mode without gradients,
    and keeps it so, in training too; that kernel has no backward (and rounds the
    activations to bf16), so every later forward returns an output with no gradient
    towards its input. Adapters before the layer then get no gradient, or a wrong one,
    silently: training stops after the first evaluation pass. Called before the layer's
    forward (a hook :func:`prepare_target` installs), this puts the weight back into the
    canonical layout, losslessly (:func:`dequantize_weight` is unchanged), when the layer
    is in training mode or the forward records a gradient towards ``x``; bitsandbytes
    repacks it again at the next inference pass. Returns whether it unpacked.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import quantize_model
    >>> from tera.adapters.quantized import keep_input_gradient
    >>> layer = quantize_model(nn.Sequential(nn.Linear(64, 64)), "4bit")[0]
    >>> keep_input_gradient(layer, torch.randn(2, 64))  # not repacked: nothing to do
    False
    """
    weight: Any = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if not getattr(state, "packing_format_for_cpu", False):
        return False
    if not (module.training or (torch.is_grad_enabled() and x.requires_grad)):
        return False
    functional = _require("bitsandbytes", "a 4-bit base").functional
    data, state = _unpacked_4bit(functional, weight.data, state)
    weight.data, weight.quant_state = data, state
    if getattr(module, "quant_state", None) is not None:
        module.quant_state = state
    return True


def _keep_input_gradient_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], torch.Tensor):
        keep_input_gradient(module, args[0])


# -- dequantize / requantize -------------------------------------------------------------------
def _bnb8_scales(module: Any) -> torch.Tensor:
    scb: torch.Tensor | None = (
        module.state.SCB if module.state.SCB is not None else module.weight.SCB
    )
    if scb is None:
        raise TargetError(
            "this Linear8bitLt holds no scales (SCB): its weight is not quantized yet; call "
            "model.to(device) first"
        )
    return scb


def _unpacked_4bit(functional: Any, data: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """The canonical layout of a 4-bit weight bitsandbytes repacked for CPU inference.

    bitsandbytes >= 0.49, on CPUs with AVX512-BF16, rewrites a ``Linear4bit``'s weight for a
    bf16 kernel the first time the layer runs in eval mode without gradients (block scales
    rounded to bfloat16, double quantization undone). Its own inverse re-quantizes nested
    scales (lossy) and mutates the state; this unpacks a copy losslessly, with the bf16
    scales the repacked layer computes with, so the result is the weight its forward uses.
    """
    state = copy.deepcopy(state)
    state.original_nested = False  # keep the plain (bf16) scales, no re-quantization
    data, state = functional._convert_weight_packed_for_cpu_inverse(data, state)
    state.absmax = state.absmax.T.reshape(-1).float()
    state.nested = False
    return data, state


@torch.no_grad()
def dequantize_weight(module: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight of a quantized linear layer, dequantized, as ``out x in``.

    Parameters
    ----------
    module : nn.Module
        A layer :func:`is_quantized` accepts (an ordinary ``nn.Linear`` returns its weight).
    dtype : torch.dtype, optional
        The result's dtype; by default the one the quantizer dequantizes to (the original
        weight's dtype for 4-bit and torchao, float32 for 8-bit).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import dequantize_weight, quantize_model
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> layer = nn.Linear(64, 32)
    >>> w = layer.weight.detach().clone()
    >>> q = quantize_model(nn.Sequential(layer), "8bit")[0]
    >>> bool((dequantize_weight(q) - w).abs().max() <= w.abs().max() / 127)   # int8 rows
    True
    """
    info = quantization_of(module)
    layer: Any = module  # duck-typed quantized layer
    weight = layer.weight
    if info is None:
        out = weight.detach()
    elif info.backend == "bnb4":
        functional = _require("bitsandbytes", "a 4-bit base").functional
        state = weight.quant_state
        data = weight.data
        if getattr(state, "packing_format_for_cpu", False):
            data, state = _unpacked_4bit(functional, data, state)
        out = functional.dequantize_4bit(data, state)
    elif info.backend == "bnb8":
        functional = _require("bitsandbytes", "an 8-bit base").functional
        scales = _bnb8_scales(layer)
        out = functional.int8_vectorwise_dequant(weight.data, scales.to(weight.device))
    else:
        out = weight.dequantize()
    shape = (int(layer.out_features), int(layer.in_features))
    if tuple(out.shape) != shape:
        out = out.reshape(shape)
    result: torch.Tensor = out if dtype is None else out.to(dtype)
    return result


def _requantized(module: Any, info: QuantizedBase, weight: torch.Tensor) -> nn.Module:
    """A copy of the quantized layer ``module`` holding ``weight`` (``out x in``).

    Quantized the same way (scheme, block size, storage); ``module`` itself is not changed.
    """
    new: Any = copy.deepcopy(module)
    device = module.weight.device
    if info.backend == "bnb4":
        bnb = _require("bitsandbytes", "a 4-bit base")
        old = module.weight
        new.weight = bnb.nn.Params4bit(
            weight.to("cpu", old.quant_state.dtype),
            requires_grad=False,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=new,
        ).to(device)
    elif info.backend == "bnb8":
        bnb = _require("bitsandbytes", "an 8-bit base")
        new.weight = bnb.nn.Int8Params(
            weight.to("cpu", torch.float32), requires_grad=False, has_fp16_weights=False
        ).to(device)
        new.state.CB = None
        new.state.SCB = None
        new.state.reset_grads()
    else:
        old = module.weight
        block = list(getattr(old, "block_size", []))
        if type(old).__name__ != "Int8Tensor" or getattr(old, "act_quant_kwargs", None):
            raise MergeError(
                f"cannot requantize a torchao {type(old).__name__} weight (tera requantizes int8 "
                "weight-only Int8Tensor weights); merge with merge_and_unload(dequantize=True) "
                "for a full-precision model, or keep the adapter unmerged"
            )
        granularity = _require("torchao.quantization", "a torchao base")
        rows, cols = module.out_features, module.in_features
        if block == [1, cols]:
            gran: Any = granularity.PerRow()
        elif block == [rows, cols]:
            gran = granularity.PerTensor()
        else:
            raise MergeError(
                f"cannot requantize a torchao Int8Tensor with block size {block} (tera "
                "requantizes per-row and per-tensor int8); merge with "
                "merge_and_unload(dequantize=True)"
            )
        qweight = type(old).from_hp(weight.to(device, old.dtype), gran)
        new.weight = nn.Parameter(qweight, requires_grad=False)
    result: nn.Module = new
    return result


@dataclass(frozen=True)
class _MergeError:
    max: float
    sum_sq: float
    count: int
    dw_sum_sq: float


_REPORT: list[list[_MergeError]] = []


def _merge_message(errors: Sequence[_MergeError], what: str) -> str:
    count = sum(e.count for e in errors)
    rms = math.sqrt(sum(e.sum_sq for e in errors) / max(count, 1))
    dw_rms = math.sqrt(sum(e.dw_sum_sq for e in errors) / max(count, 1))
    return (
        f"merged the adapter into {what} and requantized: the stored weights differ from "
        f"W0 + dW by max {max(e.max for e in errors):.3g}, rms {rms:.3g} over "
        f"{count:,d} weights (dW itself has rms {dw_rms:.3g}); merge_and_unload(dequantize="
        "True) returns full-precision layers instead"
    )


@contextlib.contextmanager
def merge_report() -> Iterator[None]:
    """Collect the requantization errors of the merges inside into one warning."""
    _REPORT.append([])
    try:
        yield
    finally:
        errors = _REPORT.pop()
        if errors:
            what = f"{len(errors)} quantized layer" + ("s" if len(errors) > 1 else "")
            warnings.warn(_merge_message(errors, what), QuantizedMergeWarning, stacklevel=4)


def merged_weight(module: nn.Module, dw: torch.Tensor) -> torch.Tensor:
    """``W0 + dW`` in float32 from the dequantized base ``module``, checked finite.

    Raises
    ------
    MergeError
        If the sum holds NaN/inf (nothing is changed).
    """
    w0 = dequantize_weight(module, torch.float32)
    merged = w0 + dw.to(w0.device, torch.float32)
    if not torch.isfinite(merged).all():
        raise MergeError(
            "merging would write NaN/inf into the quantized base weight (dW holds non-finite "
            "values; check the adapter's parameters); the base weight was not changed"
        )
    return merged


@torch.no_grad()
def requantized(
    module: nn.Module, info: QuantizedBase, merged: torch.Tensor, dw: torch.Tensor
) -> nn.Module:
    """A new quantized module holding ``merged`` (``W0 + dW``), with its error reported.

    The error of the requantization (max and rms against ``merged``) is warned as a
    :class:`QuantizedMergeWarning`, once per :func:`merge_report` block. ``module`` is not
    changed.
    """
    new = _requantized(module, info, merged)
    err = dequantize_weight(new, torch.float32) - merged
    record = _MergeError(
        float(err.abs().max()),
        float(err.square().sum()),
        err.numel(),
        float(dw.to(torch.float32).square().sum()),
    )
    if _REPORT:
        _REPORT[-1].append(record)
    else:
        what = f"the {info.description} weight of this layer"
        warnings.warn(_merge_message([record], what), QuantizedMergeWarning, stacklevel=4)
    return new


def restore_original(info: QuantizedBase) -> nn.Module:
    """The quantized base kept before a merge (forgotten by ``info``), or a refusal.

    Raises
    ------
    AdapterStateError
        If the merge kept no original (``keep_original=False``): a requantized weight
        cannot give back its original.
    """
    if info.original is None:
        raise AdapterStateError(
            f"this layer's {info.description} weight was merged with keep_original=False and "
            "requantized: the original quantized weight is gone and subtracting dW would not "
            "restore it; merge with keep_original=True (the default) to unmerge later, or "
            "reload the base model"
        )
    original = info.original
    info.original = None
    info.requantized = False
    return original


def float_linear(module: nn.Module, weight: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` of ``module``'s shape and bias holding ``weight`` in ``dtype``."""
    layer: Any = module
    bias = getattr(layer, "bias", None)
    out = nn.Linear(
        layer.in_features, layer.out_features, bias=bias is not None, device="meta", dtype=dtype
    )
    out.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach().to(weight.device, dtype), requires_grad=False)
    return out


# -- whole models ------------------------------------------------------------------------------
def _selected(name: str, targets: str | Sequence[str] | None, keep: Sequence[str]) -> bool:
    if targets is None:
        return not any(name == k or name.endswith("." + k) for k in keep)
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


_BLOCK_4BIT = 64  # bitsandbytes' default 4-bit block size


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    mode: QuantMode,
    target_modules: str | Sequence[str] | None = None,
    *,
    quant_type: Literal["nf4", "fp4"] = "nf4",
    compute_dtype: torch.dtype | None = None,
    double_quant: bool = False,
    threshold: float = 6.0,
    keep: Sequence[str] = DEFAULT_KEEP,
) -> nn.Module:
    """Swap a model's ``nn.Linear`` layers for bitsandbytes 4- or 8-bit ones, in place.

    What ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` builds, for a
    model already in memory (any ``nn.Module``, on the device its weights are on).

    Parameters
    ----------
    model : nn.Module
        The model; its layers are replaced in place and it is returned.
    mode : {"4bit", "8bit"}
        ``Linear4bit`` (block-wise 4-bit, ``quant_type``) or ``Linear8bitLt`` (LLM.int8():
        per-row int8 weights).
    target_modules : str or sequence of str, optional
        Which layers (a regex over full names, or name suffixes, as ``target_modules`` of
        the adapter configs); by default every ``nn.Linear`` except ``keep``.
    quant_type : {"nf4", "fp4"}
        The 4-bit data type.
    compute_dtype : torch.dtype, optional
        The 4-bit layer's compute dtype (default: that of the activations).
    double_quant : bool
        Quantize the 4-bit block scales too (QLoRA's double quantization).
    threshold : float
        LLM.int8()'s outlier threshold on the activations (8-bit; 6.0 as in
        ``BitsAndBytesConfig``, 0 turns the mixed-precision decomposition off).
    keep : sequence of str
        Layer-name suffixes left in full precision when ``target_modules`` is None.

    Returns
    -------
    nn.Module
        ``model``, with the selected layers quantized (see :func:`weight_bytes`).

    Raises
    ------
    DependencyError
        bitsandbytes is not installed.
    ShapeError
        ``mode`` is not ``"4bit"`` or ``"8bit"``, or a 4-bit layer's ``in_features`` is not
        a multiple of bitsandbytes' block of 64.
    TargetError
        ``target_modules`` selects no ``nn.Linear``.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import quantize_model, weight_bytes
    >>> mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    >>> before = weight_bytes(mlp)
    >>> mlp = quantize_model(mlp, "8bit", target_modules=["0"])
    >>> type(mlp[0]).__name__, type(mlp[2]).__name__, weight_bytes(mlp) < before
    ('Linear8bitLt', 'Linear', True)
    """
    if mode not in ("4bit", "8bit"):
        raise ShapeError(f"mode must be '4bit' or '8bit', got {mode!r}")
    bnb = _require("bitsandbytes", f"quantize_model(..., {mode!r})")
    found = [
        (name, m)
        for name, m in model.named_modules()
        if name and type(m) is nn.Linear and not is_quantized(m)
        if _selected(name, target_modules, keep)
    ]
    if not found:
        raise TargetError(
            f"target_modules={target_modules!r} selects no full-precision nn.Linear in this "
            "model; nothing to quantize"
        )
    narrow = [name for name, lin in found if lin.in_features % _BLOCK_4BIT]
    if mode == "4bit" and narrow:
        raise ShapeError(
            f"4-bit layers need in_features divisible by bitsandbytes' block of {_BLOCK_4BIT} "
            f"(its CPU kernels fail otherwise), but {', '.join(narrow[:4])} "
            f"{'have' if len(narrow) > 1 else 'has'} in_features="
            f"{found[[n for n, _ in found].index(narrow[0])][1].in_features}; quantize "
            "them to '8bit', or leave them out with target_modules= / keep="
        )
    for name, lin in found:
        weight, bias = lin.weight.detach(), lin.bias
        device = weight.device
        has_bias = bias is not None
        if mode == "4bit":
            new = bnb.nn.Linear4bit(
                lin.in_features,
                lin.out_features,
                bias=has_bias,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type=quant_type,
                device="meta",
            )
            new.weight = bnb.nn.Params4bit(
                weight.to("cpu"),
                requires_grad=False,
                compress_statistics=double_quant,
                quant_type=quant_type,
                module=new,
            )
        else:
            new = bnb.nn.Linear8bitLt(
                lin.in_features,
                lin.out_features,
                bias=has_bias,
                has_fp16_weights=False,
                threshold=threshold,
                device="meta",
            )
            new.weight = bnb.nn.Int8Params(
                weight.to("cpu"), requires_grad=False, has_fp16_weights=False
            )
        if has_bias:
            new.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        new = new.to(device)  # bitsandbytes quantizes here
        new.train(lin.training)
        _set(model, name, new)
    return model


@torch.no_grad()
def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every quantized linear layer by an ``nn.Linear`` of its dequantized weight.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import dequantize_model, quantize_model
    >>> mlp = quantize_model(nn.Sequential(nn.Linear(64, 64)), "4bit")
    >>> type(dequantize_model(mlp)[0]).__name__
    'Linear'
    """
    for name, module in list(model.named_modules()):
        if name and is_quantized(module):
            _set(model, name, float_linear(module, dequantize_weight(module, dtype), dtype))
    return model


def numel(p: torch.Tensor) -> int:
    """The number of weights a parameter stands for (a packed 4-bit weight: its full shape).

    bitsandbytes stores two 4-bit values per byte, so ``Params4bit.numel()`` is half the
    layer's weights; "Params (%)" counts weights, as PEFT does.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.quantized import numel
    >>> numel(torch.zeros(3, 4))
    12
    """
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    if _from_package(p, "bitsandbytes", "Params4bit") and shape is not None:
        return math.prod(shape)
    return p.numel()


def _tensor_bytes(t: torch.Tensor) -> int:
    if _from_package(t, "torchao"):
        names = list(getattr(t, "tensor_data_names", []))
        names += list(getattr(t, "optional_tensor_data_names", []) or [])
        inner = [getattr(t, n, None) for n in names]
        return sum(_tensor_bytes(x) for x in inner if isinstance(x, torch.Tensor))
    size = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    if state is not None and hasattr(state, "as_dict"):
        size += sum(
            v.numel() * v.element_size()
            for v in state.as_dict(packed=True).values()
            if isinstance(v, torch.Tensor)
        )
    scb = getattr(t, "SCB", None)
    if isinstance(scb, torch.Tensor):
        size += scb.numel() * scb.element_size()
    return size


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers as stored, quantization statistics included.

    4-bit weights count their packed bytes plus block scales (and the nested scales of
    double quantization), 8-bit their int8 bytes plus row scales, torchao tensors their inner
    data; each tensor once.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import weight_bytes
    >>> weight_bytes(nn.Linear(4, 2))   # (8 + 2) float32 numbers
    40
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if quantization_of(module) is not None and getattr(module, "state", None) is not None:
            scb = getattr(module.state, "SCB", None)  # 8-bit scales after the first forward
            if isinstance(scb, torch.Tensor) and getattr(module.weight, "SCB", None) is None:
                tensors.append(scb)
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += _tensor_bytes(t)
    return total

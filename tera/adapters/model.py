"""The factory: ``adapt(model, config)`` and the ``AdaptedModel`` it returns (PEFT-familiar)."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, overload

from torch import nn

from tera.adapters import quantized
from tera.adapters.base import Adapter
from tera.adapters.config import AdapterConfig, HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig
from tera.adapters.factors import SharedFactors
from tera.adapters.hira import HiRA
from tera.adapters.layer import (
    AdapterLinear,
    EnginePath,
    is_conv1d,
    linear_shape,
    module_weight,
)
from tera.adapters.lora import LoRA
from tera.adapters.tera import TeRA
from tera.adapters.vera import VeRA
from tera.errors import AdapterStateError, BackendError, ConfigError, ShapeError, TargetError
from tera.theory import params_percent

__all__ = [
    "ADAPTERS",
    "AdaptedModel",
    "ParameterReport",
    "adapt",
    "find_targets",
    "parameter_report",
]

ADAPTERS: dict[type[AdapterConfig], type[Adapter]] = {
    LoRAConfig: LoRA,
    VeRAConfig: VeRA,
    HiRAConfig: HiRA,
    TeRAConfig: TeRA,
}


def _adapter_class(config: AdapterConfig) -> type[Adapter]:
    try:
        return ADAPTERS[type(config)]
    except KeyError:
        raise ConfigError(
            f"config must be one of {', '.join(c.__name__ for c in ADAPTERS)}, got "
            f"{config!r} ({type(config).__name__}); build one, e.g. TeRAConfig(in_mode=..., "
            "out_mode=...), or rebuild a saved one with config_from_dict(...)"
        ) from None


def _matches(name: str, patterns: str | Sequence[str]) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _inside_adapter(name: str, adapted: set[str]) -> bool:
    return any(name.startswith(a + ".") for a in adapted)


def find_targets(
    model: nn.Module, target_modules: str | Sequence[str]
) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that ``target_modules`` selects.

    Raises
    ------
    TargetError
        If nothing matches (the message lists the model's Linear layers), or a matched
        module is not a Linear layer.
    AdapterStateError
        If a matched layer is already adapted.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import find_targets
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [name for name, _ in find_targets(mlp, ["0", "2"])]
    ['0', '2']
    """
    adapted = {n for n, m in model.named_modules() if isinstance(m, AdapterLinear)}
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or _inside_adapter(name, adapted) or not _matches(name, target_modules):
            continue
        if isinstance(module, AdapterLinear):
            raise AdapterStateError(
                f"'{name}' is already adapted; call unload() or merge_and_unload() before "
                "adapting it again"
            )
        if not _is_linear(module):
            linear_shape(module, name)  # raises TargetError naming the module and its type
        found.append((name, module))
    if not found:
        linears = [
            n for n, m in model.named_modules() if _is_linear(m) and not _inside_adapter(n, adapted)
        ]
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise TargetError(
            f"target_modules={target_modules!r} matched no module; the model's Linear layers "
            f"end in: {', '.join(suffixes) or '(none)'} (e.g. {linears[:3]})"
        )
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts of an adapter on a model (computed from shapes only).

    Attributes
    ----------
    adapter : int
        Trainable adapter parameters (the paper's numerator).
    modules_to_save : int
        Parameters of ``modules_to_save`` (e.g. a new head), counted apart.
    base : int
        All parameters of the base model.
    layers : dict
        ``name -> (in_features, out_features, trainable)`` per adapted layer.
    """

    adapter: int
    modules_to_save: int
    base: int
    layers: dict[str, tuple[int, int, int]]

    @property
    def percent(self) -> float:
        """The paper's "Params (%)", ``100 * adapter / (base + adapter)``."""
        return params_percent(self.adapter, self.base)


def parameter_report(model: nn.Module, config: AdapterConfig) -> ParameterReport:
    """Count what ``adapt(model, config)`` would train, without building anything.

    Works for models on the ``meta`` device (e.g. ``AutoModel.from_config`` under
    ``torch.device("meta")``), so a 7B model's "Params (%)" costs no memory.

    Examples
    --------
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, parameter_report
    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> parameter_report(mlp, LoRAConfig(r=2, target_modules=["0"])).adapter
    24
    """
    cls = _adapter_class(config)
    layers: dict[str, tuple[int, int, int]] = {}
    for name, module in find_targets(model, config.target_modules):
        in_f, out_f = linear_shape(module, name)
        layers[name] = (in_f, out_f, cls.trainable_count(config, in_f, out_f))
    saved = sum(
        p.numel()
        for _, m in _modules_to_save(model, config.modules_to_save)
        for p in m.parameters()
    )
    base = sum(quantized.numel(p) for p in model.parameters())  # hook: 4-bit packs 2 a byte
    return ParameterReport(sum(t for _, _, t in layers.values()), saved, base, layers)


def _modules_to_save(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    if not names:
        return []
    found = [(n, m) for n, m in model.named_modules() if n and _matches(n, names)]
    if not found:
        top = [n for n, _ in model.named_children()]
        raise TargetError(
            f"modules_to_save={list(names)!r} matched no module; top-level modules: {top}"
        )
    return found


def adapt(
    model: nn.Module, config: AdapterConfig, *, targets: Sequence[str] | None = None
) -> AdaptedModel:
    """Attach the adapter described by ``config`` to ``model``'s target layers.

    The base model's parameters are frozen (``requires_grad=False``), each target layer is
    replaced in place by an :class:`~tera.adapters.layer.AdapterLinear`, and the frozen
    shared factors are created once per key and registered on the model root.

    Parameters
    ----------
    model : nn.Module
        Any PyTorch model, e.g. a Hugging Face ``transformers`` model.
    config : AdapterConfig
        ``TeRAConfig``, ``VeRAConfig``, ``HiRAConfig`` or ``LoRAConfig``.
    targets : sequence of str, optional
        Exact layer names, overriding ``config.target_modules`` (used when loading).

    Returns
    -------
    AdaptedModel

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt
    >>> mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> model = adapt(mlp, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    >>> model.trainable_parameter_count()   # d vectors of modes (4, 4 | 4, 4)
    16
    """
    cls = _adapter_class(config)
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise AdapterStateError(
            "this model already carries an adapter; call unload() or merge_and_unload() on "
            "it before adapting it again"
        )
    if targets is None:
        found = find_targets(model, config.target_modules)
    else:
        found = []
        for name in targets:
            try:
                found.append((name, model.get_submodule(name)))
            except AttributeError:
                raise TargetError(f"the model has no module named '{name}'") from None
    saved = _modules_to_save(model, config.modules_to_save)
    devices = {str(module_weight(m).device) for _, m in found}
    if len(devices) > 1:
        where = {n: str(module_weight(m).device) for n, m in found}
        raise BackendError(
            f"the target layers live on different devices ({', '.join(sorted(devices))}: "
            f"{dict(list(where.items())[:4])}); the frozen shared factors are stored once per "
            "shape, on one device: move the model to one device (model.to(device)) before adapt()"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    shared = SharedFactors()
    layers: dict[str, AdapterLinear] = {}
    for name, module in found:
        in_f, out_f = linear_shape(module, name)
        adapter = cls(config, in_f, out_f, shared, name, device=module_weight(module).device)
        layer = AdapterLinear(module, adapter, dropout=config.dropout, shared=shared)
        _set_submodule(model, name, layer)
        layers[name] = layer
    for _, m in saved:
        for p in m.parameters():
            p.requires_grad_(True)
    return AdaptedModel(model, config, layers, [n for n, _ in saved])


class _Forward:
    """``AdaptedModel.forward``: calls the base model, shows the base ``forward``'s signature."""

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._module.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)


def _call_base(self: AdaptedModel, *args: Any, **kwargs: Any) -> Any:
    """Call the base model (its adapted layers run their adapters)."""
    return self.base_model(*args, **kwargs)


class _ForwardDescriptor:
    """``AdaptedModel.forward``: :class:`_Forward` on a model, a plain function on the class."""

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Callable[..., Any]: ...
    @overload
    def __get__(self, obj: AdaptedModel, owner: type | None = None) -> _Forward: ...
    def __get__(
        self, obj: AdaptedModel | None, owner: type | None = None
    ) -> _Forward | Callable[..., Any]:
        return _call_base if obj is None else _Forward(obj.base_model)


class AdaptedModel(nn.Module):
    """A model with adapters attached; forwards everything else to the base model.

    Attributes not defined here (``config``, ``get_input_embeddings``, ...) are looked up
    on the base model, so Hugging Face code sees the model it expects; the adapter's own
    configuration is ``adapter_config``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt
    >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
    >>> model.print_trainable_parameters()
    trainable params: 32 || all params: 104 || trainable%: 30.7692
    >>> base = model.merge_and_unload()
    >>> type(base[0]).__name__
    'Linear'
    """

    base_model: nn.Module

    def __init__(
        self,
        model: nn.Module,
        config: AdapterConfig,
        layers: dict[str, AdapterLinear],
        modules_to_save: list[str],
    ) -> None:
        super().__init__()
        self.base_model = model
        self.adapter_config = config
        self._layer_names = list(layers)
        self.modules_to_save = modules_to_save

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    forward = _ForwardDescriptor()
    """Call the base model (its adapted layers run their adapters).

    On a model, a callable with the base model's ``forward`` signature, so code that
    inspects it (Hugging Face ``Trainer`` keeps only the dataset columns it names) sees
    ``input_ids``, ``labels``, ... rather than ``*args, **kwargs``.
    """

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Pass-through to the base model's ``generate`` (Hugging Face models)."""
        generate = getattr(self.base_model, "generate", None)
        if generate is None:
            raise AttributeError(f"{type(self.base_model).__name__} has no generate()")
        return generate(*args, **kwargs)

    # -- introspection ---------------------------------------------------------------------
    @property
    def adapter_layers(self) -> dict[str, AdapterLinear]:
        """``name -> AdapterLinear`` for every adapted layer."""
        return {n: self.base_model.get_submodule(n) for n in self._layer_names}  # type: ignore[misc]

    @property
    def shared_factors(self) -> SharedFactors:
        """The frozen shared factors (one storage per key)."""
        layers = list(self.adapter_layers.values())
        if not layers:
            raise AdapterStateError("the adapter was unloaded from this model")
        return layers[0].tera_factors

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` for each trainable adapter parameter, named as saved."""
        for lname, layer in self.adapter_layers.items():
            for pname, p in layer.adapter.named_parameters():
                yield f"{lname}.adapter.{pname}", p

    def trainable_parameter_count(self) -> int:
        """Parameters with ``requires_grad`` (adapter plus ``modules_to_save``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> ParameterReport:
        """Counts as :func:`parameter_report`, on the adapted model."""
        layers = {
            name: (
                lay.in_features,
                lay.out_features,
                sum(p.numel() for p in lay.adapter.parameters()),
            )
            for name, lay in self.adapter_layers.items()
        }
        adapter = sum(t for _, _, t in layers.values())
        saved = sum(
            p.numel()
            for n in self.modules_to_save
            for p in self.base_model.get_submodule(n).parameters()
        )
        total = sum(quantized.numel(p) for p in self.parameters())  # hook: 4-bit weights
        return ParameterReport(adapter, saved, total - adapter, layers)

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: ``trainable params: N || all params: M || trainable%: P``."""
        trainable = self.trainable_parameter_count()
        total = sum(quantized.numel(p) for p in self.parameters())  # hook: 4-bit weights
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # -- engine ----------------------------------------------------------------------------
    def set_engine_path(self, path: EnginePath) -> None:
        """Force every layer to ``"materialize"`` or ``"push"``, or back to ``"auto"``."""
        if path not in ("auto", "materialize", "push"):
            raise ShapeError(f"path must be 'auto', 'materialize' or 'push', got {path!r}")
        for layer in self.adapter_layers.values():
            layer.path = path

    # -- merging and unloading -------------------------------------------------------------
    def merge(self) -> None:
        """Merge every adapter into its base weight (inference at base speed)."""
        with quantized.merge_report():  # quantized-base hook: one warning for all layers
            for layer in self.adapter_layers.values():
                layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        for layer in self.adapter_layers.values():
            layer.unmerge()

    def _replace_layers(self, merge: bool, dequantize: bool = False) -> nn.Module:
        with quantized.merge_report():
            for name, layer in self.adapter_layers.items():
                if layer.quantization is not None:  # quantized-base hook
                    _set_submodule(
                        self.base_model, name, quantized.unwrap(layer, merge, dequantize)
                    )
                    continue
                if merge and not layer.merged:
                    layer.merge(keep_original=False)
                if not merge and layer.merged:
                    layer.unmerge()
                _set_submodule(self.base_model, name, layer.base_layer)
        self._layer_names = []
        if dequantize:  # quantized-base hook: the rest of the model in full precision too
            quantized.dequantize_model(self.base_model)
        return self.base_model

    def merge_and_unload(self, dequantize: bool = False) -> nn.Module:
        """Merge the adapters and return the base model with plain layers again.

        On a quantized base (see :mod:`tera.adapters.quantized`) each adapted layer is
        dequantized, ``dW`` added and the sum requantized, with a
        :class:`~tera.adapters.quantized.QuantizedMergeWarning` stating the error that
        introduced (max and rms over the weights); ``dequantize=True`` instead returns
        float32 ``nn.Linear`` layers holding ``W0 + dW`` for every quantized layer.
        """
        return self._replace_layers(merge=True, dequantize=dequantize)

    def unload(self) -> nn.Module:
        """Remove the adapters without merging and return the original base model."""
        return self._replace_layers(merge=False)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager in which the model computes as the base model."""
        layers = list(self.adapter_layers.values())
        merged = [layer for layer in layers if layer.merged]
        for layer in merged:
            layer.unmerge()
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.disabled = False
            for layer in merged:
                layer.merge()

    # -- saving ----------------------------------------------------------------------------
    def save_pretrained(
        self,
        directory: str | FsPath,
        include_factors: bool = False,
        *,
        is_main_process: bool = True,
        **hf_kwargs: Any,
    ) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` to ``directory``.

        See :func:`tera.adapters.save_adapter`. Accepts the keyword arguments Hugging Face
        code passes to a ``save_pretrained`` (``is_main_process``: only the main process of
        a distributed run writes; ``state_dict``, ``safe_serialization``, ...: ignored, the
        adapter's own tensors are saved, always as safetensors).
        """
        from tera.adapters.io import save_adapter

        if is_main_process:
            save_adapter(self, directory, include_factors=include_factors)

    def load_adapter_weights(self, directory: str | FsPath) -> None:
        """Load the tensors of an adapter saved from this same configuration (resume training).

        See :func:`~tera.adapters.load_adapter_weights`.
        """
        from tera.adapters.io import load_adapter_weights

        load_adapter_weights(self, directory)

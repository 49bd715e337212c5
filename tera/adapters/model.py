"""The factory: ``adapt(model, config)`` and the ``AdaptedModel`` it returns (PEFT-familiar)."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any, cast, overload

import torch
from torch import nn

import tera.adapters.hira
import tera.adapters.lora
import tera.adapters.tera
import tera.adapters.vera  # noqa: F401 - the four adapters register themselves on import
from tera.adapters import io, peft_format, quantized, registry
from tera.adapters.base import Adapter
from tera.adapters.config import AdapterConfig, config_from_dict
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import (
    BASE_ADAPTER,
    AdapterLinear,
    EnginePath,
    RowAdapters,
    is_conv1d,
    linear_shape,
    module_weight,
)
from tera.errors import (
    AdapterStateError,
    BackendError,
    FormatError,
    LoadError,
    ShapeError,
    TargetError,
)
from tera.theory import params_percent

__all__ = [
    "ADAPTERS",
    "AdaptedModel",
    "ParameterReport",
    "adapt",
    "find_targets",
    "load_adapter",
    "load_adapter_weights",
    "parameter_report",
    "save_adapter",
]

ADAPTERS: Mapping[type[AdapterConfig], type[Adapter]] = MappingProxyType(
    {
        registry.adapter_class_for_kind(k).config_class: registry.adapter_class_for_kind(k)
        for k in registry.kinds()
    }
)
"""Config class -> adapter class: a read-only view of :mod:`tera.adapters.registry`."""
_adapter_class = registry.adapter_class


def _matches(name: str, patterns: str | Sequence[str]) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _inside_adapter(name: str, adapted: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in adapted for i in range(1, len(parts)))


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


def _modules_outside_adapters(
    module: nn.Module, prefix: str = ""
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule, adapted layers included but not entered.

    The walk never descends into an :class:`AdapterLinear`, so its cost does not grow with
    the number of adapters the layers hold.
    """
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        yield full, child
        if not isinstance(child, AdapterLinear):
            yield from _modules_outside_adapters(child, full)


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
    model: nn.Module,
    config: AdapterConfig,
    *,
    targets: Sequence[str] | None = None,
    adapter_name: str = "default",
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
    adapter_name : str
        The adapter's name (PEFT's ``"default"``); more adapters join it with
        :meth:`AdaptedModel.add_adapter` and :meth:`AdaptedModel.load_adapter`.

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
    _check_adapter_name(adapter_name)
    _same_device(found)
    for p in model.parameters():
        p.requires_grad_(False)
    shared = SharedFactors()
    layers: dict[str, AdapterLinear] = {}
    for name, module in found:
        in_f, out_f = linear_shape(module, name)
        adapter = cls(config, in_f, out_f, shared, name, device=module_weight(module).device)
        layer = AdapterLinear(
            module, adapter, dropout=config.dropout, shared=shared, adapter_name=adapter_name
        )
        _set_submodule(model, name, layer)
        layers[name] = layer
    for _, m in saved:
        for p in m.parameters():
            p.requires_grad_(True)
    return AdaptedModel(model, config, layers, [n for n, _ in saved], adapter_name)


def _check_adapter_name(name: object) -> None:
    if not isinstance(name, str) or not name or "." in name or name == BASE_ADAPTER:
        raise AdapterStateError(
            f"adapter_name must be a non-empty string without dots, other than "
            f"{BASE_ADAPTER!r} (which names the base model in mixed batches); got {name!r}"
        )


def _same_device(found: Sequence[tuple[str, nn.Module]]) -> None:
    devices = {str(module_weight(m).device) for _, m in found}
    if len(devices) > 1:
        where = {n: str(module_weight(m).device) for n, m in found}
        raise BackendError(
            f"the target layers live on different devices ({', '.join(sorted(devices))}: "
            f"{dict(list(where.items())[:4])}); the frozen shared factors are stored once per "
            "shape, on one device: move the model to one device (model.to(device)) before adapt()"
        )


class _Forward:
    """``AdaptedModel.forward``: calls the base model, shows the base ``forward``'s signature."""

    def __init__(self, model: AdaptedModel) -> None:
        self._model = model

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._model.base_model.forward)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call_base(self._model, *args, **kwargs)


def _call_base(self: AdaptedModel, *args: Any, **kwargs: Any) -> Any:
    """Call the base model (its adapted layers run their adapters).

    ``adapter_names=[...]`` (one name per row, ``"__base__"`` for none) runs a mixed batch.
    """
    names = kwargs.pop("adapter_names", None)
    if names is None:
        return self.base_model(*args, **kwargs)
    with self._mixed_batch(names, args, kwargs):
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
        return _call_base if obj is None else _Forward(obj)


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
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        self.base_model = model
        self._configs: dict[str, AdapterConfig] = {adapter_name: config}
        self._active = adapter_name
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
        """Pass-through to the base model's ``generate`` (Hugging Face models).

        ``adapter_names=[...]`` (one name per prompt, ``"__base__"`` for none) generates a
        mixed batch: every step, prefill and the cached decoding steps alike, runs each row
        through its own adapter (beams and return sequences inherit their prompt's).
        """
        generate = getattr(self.base_model, "generate", None)
        if generate is None:
            raise AttributeError(f"{type(self.base_model).__name__} has no generate()")
        names = kwargs.pop("adapter_names", None)
        if names is None:
            return generate(*args, **kwargs)
        with self._mixed_batch(names, args, kwargs):
            return generate(*args, **kwargs)

    @contextlib.contextmanager
    def _mixed_batch(
        self, names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[None]:
        """Every adapted layer runs row ``b`` through adapter ``names[b]`` inside."""
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise AdapterStateError(
                f"adapter_names must be a list of adapter names, one per row, got {names!r}"
            )
        known = self.adapter_names
        unknown = sorted({n for n in names if n != BASE_ADAPTER and n not in known})
        if unknown:
            raise AdapterStateError(
                f"adapter_names names {unknown}, which this model does not hold; it holds "
                f"{known} (and {BASE_ADAPTER!r} gives the base model)"
            )
        layers = list(self.adapter_layers.values())
        if any(layer.merged for layer in layers):
            raise AdapterStateError(
                "a merged model cannot serve a mixed batch (its weights hold one adapter); "
                "call unmerge() first"
            )
        first = next(iter(args), kwargs.get("input_ids", kwargs.get("inputs_embeds")))
        if isinstance(first, torch.Tensor) and first.ndim >= 1 and first.shape[0] != len(names):
            raise ShapeError(
                f"adapter_names gives {len(names)} names for a batch of {first.shape[0]} rows; "
                "give one name per row"
            )
        batch = RowAdapters.from_names(list(names))
        for layer in layers:
            layer.row_adapters = batch
        try:
            yield
        finally:
            for layer in layers:
                layer.row_adapters = None

    # -- many adapters (PEFT's names) ------------------------------------------------------
    @property
    def adapter_config(self) -> AdapterConfig:
        """The configuration of the active adapter."""
        return self._configs[self._active]

    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        """``name -> configuration`` of every adapter held (PEFT's name)."""
        return dict(self._configs)

    @property
    def adapter_names(self) -> list[str]:
        """The names of the adapters held, in the order they were added."""
        return list(self._configs)

    @property
    def active_adapter(self) -> str:
        """The adapter a plain forward runs (set with :meth:`set_adapter`)."""
        return self._active

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter a plain forward (and merge, save) uses.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import LoRAConfig, adapt
        >>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
        >>> model.add_adapter("bob", LoRAConfig(r=4, target_modules=["0"]))
        >>> model.set_adapter("bob"); model.active_adapter
        'bob'
        """
        self._require(adapter_name)
        if any(layer.merged for layer in self.adapter_layers.values()):
            raise AdapterStateError("the model is merged; unmerge() before switching adapters")
        self._active = adapter_name
        for layer in self.adapter_layers.values():
            layer.active_adapter = adapter_name

    def _require(self, adapter_name: str) -> None:
        if adapter_name not in self._configs:
            raise AdapterStateError(
                f"this model holds no adapter named {adapter_name!r}; it holds {self.adapter_names}"
            )

    def _targets_to_add(
        self, config: AdapterConfig, targets: Sequence[str] | None
    ) -> list[tuple[str, nn.Module]]:
        """``(name, module)`` to adapt: adapted layers (joined) or plain Linear ones (wrapped)."""
        if targets is not None:
            found = []
            for name in targets:
                try:
                    found.append((name, self.base_model.get_submodule(name)))
                except AttributeError:
                    raise TargetError(f"the model has no module named '{name}'") from None
            return found
        found = []
        for name, module in _modules_outside_adapters(self.base_model):
            if _matches(name, config.target_modules):
                if not isinstance(module, AdapterLinear) and not _is_linear(module):
                    linear_shape(module, name)  # raises TargetError naming the module
                found.append((name, module))
        if not found:
            find_targets(self.base_model, config.target_modules)  # raises TargetError
        return found

    def add_adapter(
        self,
        adapter_name: str,
        config: AdapterConfig,
        *,
        targets: Sequence[str] | None = None,
    ) -> None:
        """Add a new adapter (initialized as :func:`adapt` does); the active one stays.

        Adapters of one kind, scheme and seed share the frozen factors (one storage), so
        each extra adapter costs its trainable tensors only. It may target other layers
        than the adapters already held; on a layer it does not adapt it is the base.

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> model.add_adapter("bob", config)
        >>> layer = model.adapter_layers["0"]
        >>> a, b = (layer.adapters[n].operands(layer.base_weight())[0] for n in ("default", "bob"))
        >>> a.data_ptr() == b.data_ptr()   # the frozen core G: one storage for both
        True
        """
        _check_adapter_name(adapter_name)
        if adapter_name in self._configs:
            raise AdapterStateError(
                f"this model already holds an adapter named {adapter_name!r}; "
                "delete_adapter() it first or choose another name"
            )
        cls = _adapter_class(config)
        found = self._targets_to_add(config, targets)
        shared = self.shared_factors
        built: list[str] = []
        try:
            for name, module in found:
                layer = module if isinstance(module, AdapterLinear) else None
                in_f, out_f = linear_shape(layer.base_layer if layer else module, name)
                device = module_weight(layer.base_layer if layer else module).device
                adapter = cls(config, in_f, out_f, shared, name, device=device)
                if layer is None:
                    module.requires_grad_(False)
                    layer = AdapterLinear(
                        module,
                        adapter,
                        dropout=config.dropout,
                        shared=shared,
                        adapter_name=adapter_name,
                    )
                    layer.active_adapter = self._active
                    _set_submodule(self.base_model, name, layer)
                    self._layer_names.append(name)
                else:
                    layer.add_adapter(adapter_name, adapter, config.dropout)
                built.append(name)
        except Exception:
            self._configs[adapter_name] = config
            self.delete_adapter(adapter_name)
            raise
        self._configs[adapter_name] = config

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter from every layer (PEFT's name).

        Layers left without any adapter are unwrapped (the plain base layer again). Deleting
        the active adapter makes the first remaining one active; the last one cannot be
        deleted (:meth:`unload` removes everything).
        """
        self._require(adapter_name)
        remaining = [n for n in self._configs if n != adapter_name]
        if not remaining:
            raise AdapterStateError(
                f"{adapter_name!r} is the only adapter; unload() the model to remove it"
            )
        for name, layer in list(self.adapter_layers.items()):
            if adapter_name in layer.adapters:
                layer.delete_adapter(adapter_name)
            if not layer.adapters:
                _set_submodule(self.base_model, name, layer.base_layer)
                self._layer_names.remove(name)
        del self._configs[adapter_name]
        if self._active == adapter_name:
            self.set_adapter(remaining[0])

    def adapter_bytes(self, adapter_name: str | None = None) -> int:
        """Bytes of one adapter's own (trainable) tensors: what each extra adapter costs."""
        return sum(p.numel() * p.element_size() for _, p in self.adapter_parameters(adapter_name))

    @io.names_the_folder  # every error of a load names the folder
    def load_adapter(
        self, directory: str | FsPath, adapter_name: str, is_trainable: bool = False
    ) -> None:
        """Load a saved adapter as one more adapter named ``adapter_name`` (PEFT's name).

        The active adapter does not change (:meth:`set_adapter`, or ``adapter_names=`` per
        row). An adapter that does not fit the model (other layer names or shapes, another
        format, corrupted or non-finite tensors, frozen factors that differ from those the
        model's other adapters use under the same key) is refused with our error and
        leaves the model as it was: the other adapters stay usable.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     model.load_adapter(d, adapter_name="alice")
        >>> model.adapter_names
        ['default', 'alice']
        """
        directory = FsPath(directory)
        meta, tensors = _read_adapter(directory, self.base_model)
        config = config_from_dict(meta["config"])
        targets = _check_targets(self.base_model, meta, directory)
        self.add_adapter(adapter_name, config, targets=list(targets))
        try:
            self._restore(meta, tensors, directory, adapter_name)
        except Exception:
            self.delete_adapter(adapter_name)
            raise
        for _, p in self.adapter_parameters(adapter_name):
            p.requires_grad_(is_trainable)

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

    def adapter_parameters(
        self, adapter_name: str | None = None
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of an adapter's (the active one's) tensors, named as saved.

        Saved names leave the adapter's name out (``<layer>.adapter.<parameter>``), as
        PEFT's files do, so one file loads under any name.
        """
        name = self._active if adapter_name is None else adapter_name
        self._require(name)
        for lname, layer in self.adapter_layers.items():
            if name in layer.adapters:
                for pname, p in layer.adapters[name].named_parameters():
                    yield f"{lname}.adapter.{pname}", p

    def trainable_parameter_count(self) -> int:
        """Parameters with ``requires_grad`` (adapter plus ``modules_to_save``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self) -> ParameterReport:
        """Counts as :func:`parameter_report`, on the adapted model."""
        active = self._active
        layers = {
            name: (
                lay.in_features,
                lay.out_features,
                sum(p.numel() for p in lay.adapters[active].parameters()),
            )
            for name, lay in self.adapter_layers.items()
            if active in lay.adapters
        }
        adapter = sum(t for _, _, t in layers.values())
        saved = sum(
            p.numel()
            for n in self.modules_to_save
            for p in self.base_model.get_submodule(n).parameters()
        )
        total = sum(quantized.numel(p) for p in self.base_parameters())  # hook: 4-bit
        return ParameterReport(adapter, saved, total, layers)

    def base_parameters(self) -> Iterator[nn.Parameter]:
        """The base model's parameters (every adapter's own tensors left out)."""
        own = {id(p) for layer in self.adapter_layers.values() for p in layer.adapters.parameters()}
        return (p for p in self.parameters() if id(p) not in own)

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
                if layer.active_adapter in layer.adapters:
                    layer.merge()

    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        layers = list(self.adapter_layers.values())
        if layers and not any(layer.merged for layer in layers):
            raise AdapterStateError("this model is not merged; nothing to unmerge")
        for layer in layers:
            if layer.merged:
                layer.unmerge()

    def _replace_layers(self, merge: bool, dequantize: bool = False) -> nn.Module:
        with quantized.merge_report():
            for name, layer in self.adapter_layers.items():
                if layer.quantization is not None:  # quantized-base hook
                    _set_submodule(
                        self.base_model, name, quantized.unwrap(layer, merge, dequantize)
                    )
                    continue
                if merge and not layer.merged and layer.active_adapter in layer.adapters:
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

    # -- materializing a meta-device model ----------------------------------------------------
    def to_empty(
        self, *, device: str | torch.device | int | None, recurse: bool = True
    ) -> AdaptedModel:
        """Give a model adapted on the ``meta`` device memory, with the adapter initialized.

        As ``torch.nn.Module.to_empty`` (every tensor gets uninitialized storage on
        ``device``), then the adapter's tensors get their values: the frozen shared factors
        are regenerated from their seed (bit-exact, fingerprint-checked) and the trainable
        ones re-initialized as :func:`adapt` initializes them. The base weights stay
        uninitialized: load them next (:meth:`load_base_state_dict`), and a trained adapter
        after that (:meth:`load_adapter_weights`). The result equals the ordinary path,
        ``adapt()`` on a loaded model (tested).

        Examples
        --------
        >>> import torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> torch.manual_seed(0); real = nn.Sequential(nn.Linear(16, 16))  # doctest: +ELLIPSIS
        <...>
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> with torch.device("meta"):
        ...     base = nn.Sequential(nn.Linear(16, 16))
        >>> model = adapt(base, config).to_empty(device="cpu")   # no memory until here
        >>> model.load_base_state_dict(real.state_dict())
        >>> x = torch.randn(2, 16)
        >>> torch.equal(model(x), adapt(real, config)(x))
        True
        """
        super().to_empty(device=device, recurse=recurse)
        self.reset_adapter()
        return self

    def reset_adapter(self) -> None:
        """Regenerate the frozen factors and re-initialize the trainable adapter tensors."""
        layers = list(self.adapter_layers.values())
        if not layers:
            raise AdapterStateError("the adapter was unloaded from this model")
        for shared in {id(layer.tera_factors): layer.tera_factors for layer in layers}.values():
            shared.reset_parameters()
        for layer in layers:
            for adapter in layer.adapters.values():
                adapter.reset_parameters()  # type: ignore[operator]

    def load_base_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True
    ) -> None:
        """Load the base model's weights, named as in the model before :func:`adapt`.

        ``'layers.0.q_proj.weight'`` goes to the adapted layer's
        ``'layers.0.q_proj.base_layer.weight'``; the adapter's own tensors are not touched.
        With ``strict``, every base tensor must be given and nothing else.

        Raises
        ------
        LoadError
            With ``strict``: missing or unexpected keys (named).
        """
        names = set(self._layer_names)
        mapped = {}
        for key, value in state_dict.items():
            owner, _, leaf = key.rpartition(".")
            mapped[f"{owner}.base_layer.{leaf}" if owner in names else key] = value
        result = self.base_model.load_state_dict(mapped, strict=False)
        adapter_keys = {
            k for k in self.base_model.state_dict() if ".adapters." in k or "tera_factors" in k
        }
        missing = sorted(set(result.missing_keys) - adapter_keys)
        if strict and (missing or result.unexpected_keys):
            raise LoadError(
                f"the state dict does not fit the base model: missing {missing[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )

    # -- saving and loading -------------------------------------------------------------------
    def _factor_keys(self, adapter_name: str) -> list[str]:
        """The frozen factors an adapter uses, in the model's creation order."""
        used: set[str] = set()
        for layer in self.adapter_layers.values():
            if adapter_name in layer.adapters:
                adapter: Adapter = layer.adapters[adapter_name]  # type: ignore[assignment]
                used.update(adapter._factor_keys)
        return [k for k in self.shared_factors.keys() if k in used]  # noqa: SIM118

    def _adapter_state(
        self, include_factors: bool, adapter_name: str | None = None
    ) -> dict[str, torch.Tensor]:
        name = self._active if adapter_name is None else adapter_name
        tensors = {key: p.detach() for key, p in self.adapter_parameters(name)}
        for mname in self.modules_to_save:
            for pname, p in self.base_model.get_submodule(mname).named_parameters():
                tensors[f"{io.SAVE_PREFIX}{mname}.{pname}"] = p.detach()
        if include_factors:
            shared = self.shared_factors
            for i, key in enumerate(self._factor_keys(name)):
                tensors[f"{io.FACTOR_PREFIX}{i}"] = shared.get(key).detach()
        return {k: v.to("cpu").contiguous() for k, v in tensors.items()}

    def _adapter_meta(
        self, include_factors: bool, adapter_name: str | None = None
    ) -> dict[str, Any]:
        from tera import __version__

        name = self._active if adapter_name is None else adapter_name
        config = self._configs[name]
        keys = self._factor_keys(name)
        return {
            "library": "tera",
            "library_version": __version__,
            "kind": config.kind,
            "config": config.to_dict(),
            "seed": config.seed,
            "targets": {
                lname: {"in_features": layer.in_features, "out_features": layer.out_features}
                for lname, layer in self.adapter_layers.items()
                if name in layer.adapters
            },
            "modules_to_save": list(self.modules_to_save),
            "factor_keys": keys,
            **self.shared_factors.describe(keys),  # fingerprint (+ casts of a converted model)
            "includes_factors": include_factors,
        }

    def save_pretrained(
        self,
        directory: str | FsPath,
        include_factors: bool = False,
        *,
        selected_adapters: Sequence[str] | None = None,
        format: str = "tera",
        is_main_process: bool = True,
        **hf_kwargs: Any,
    ) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` to ``directory``.

        With several adapters, as PEFT: ``selected_adapters`` (default: all) are written,
        ``"default"`` into ``directory`` itself and every other into ``directory/<name>``.

        The format is :mod:`tera.adapters.io`'s. ``directory`` is created if missing and the
        two files inside are replaced atomically (leftovers of killed saves are swept).
        ``include_factors`` also stores the frozen shared factors (for portability to a
        future tera whose generator differs, or for auditing). Accepts the keyword arguments
        Hugging Face code passes to a ``save_pretrained`` (``is_main_process``: only the main
        process of a distributed run writes; ``state_dict``, ``safe_serialization``, ...:
        ignored, the adapter's own tensors are saved, always as safetensors).

        ``format="peft"`` writes the folder Hugging Face PEFT writes for the same LoRA,
        VeRA or HiRA (frozen factors included), which ``peft.PeftModel.from_pretrained``
        loads (see :mod:`tera.adapters.peft_format`; a TeRA adapter raises
        :class:`~tera.errors.FormatError`).

        Examples
        --------
        >>> import tempfile, os
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     sorted(os.listdir(d))
        ['adapter_config.json', 'adapter_model.safetensors']
        """
        if format not in ("tera", "peft"):  # PEFT interop (peft_format): the format switch
            raise FormatError(f"format must be 'tera' or 'peft', got {format!r}")
        if not is_main_process:
            return
        names = self.adapter_names if selected_adapters is None else list(selected_adapters)
        for name in names:
            self._require(name)
        folders: dict[str, io.Folder] = {}  # all adapters written as one atomic save
        for name in names:
            if format == "peft":
                meta, state = self._adapter_meta(True, name), self._adapter_state(True, name)
                folders[io.adapter_folder(name)] = peft_format.peft_folder(meta, state)
                continue
            # factors replaced since they were generated (a PEFT VeRA's projections) cannot
            # be regenerated from the seed: they are always saved
            keep = include_factors or self.shared_factors.replaced(self._factor_keys(name))
            meta = self._adapter_meta(keep, name)
            folders[io.adapter_folder(name)] = io.tera_folder(meta, self._adapter_state(keep, name))
        io.write_folders(directory, folders)

    @classmethod
    @io.names_the_folder  # every error of a load names the folder
    def from_pretrained(
        cls,
        model: nn.Module,
        directory: str | FsPath,
        is_trainable: bool = False,
        adapter_name: str = "default",
    ) -> AdaptedModel:
        """Attach a saved adapter to ``model`` (the inverse of :meth:`save_pretrained`).

        Parameters
        ----------
        model : nn.Module
            A base model with the same layer names and shapes as the one the adapter was
            trained on.
        directory : str or Path
            Directory written by ``save_pretrained``, or by PEFT's ``save_pretrained`` for a
            LoRA, VeRA or HiRA (read by :func:`tera.adapters.peft_format.read_peft`).
        is_trainable : bool
            Keep the adapter's parameters trainable (to continue training); by default they
            are frozen and the model is put in ``eval()`` mode for inference, as in PEFT.
        adapter_name : str
            The name it gets (more join with :meth:`load_adapter`).

        Returns
        -------
        AdaptedModel

        Raises
        ------
        LoadError
            Missing or corrupted files (NaN/inf tensors included), a newer format, other
            layer names or shapes.
        FingerprintError
            The regenerated frozen factors differ from those the adapter was trained with.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import AdaptedModel, TeRAConfig, adapt
        >>> torch.manual_seed(0); base = nn.Sequential(nn.Linear(16, 16))  # doctest: +ELLIPSIS
        <...>
        >>> model = adapt(base, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
        >>> with torch.no_grad(): _ = model.base_model[0].adapter.d[-1].fill_(0.5)
        >>> x = torch.randn(2, 16); y = model(x)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     loaded = AdaptedModel.from_pretrained(model.unload(), d)
        >>> torch.equal(loaded(x), y)
        True
        """
        directory = FsPath(directory)
        meta, tensors = _read_adapter(directory, model)
        config = config_from_dict(meta["config"])
        targets = _check_targets(model, meta, directory)
        adapted = adapt(model, config, targets=list(targets), adapter_name=adapter_name)
        try:
            adapted._restore(meta, tensors, directory, adapter_name)
        except Exception:
            adapted.unload()
            raise
        for _, p in adapted.adapter_parameters():
            p.requires_grad_(is_trainable)
        if not is_trainable:  # loaded for inference, as PEFT: dropout off
            adapted.eval()
        return adapted

    @io.names_the_folder  # every error of a load names the folder
    def load_adapter_weights(
        self, directory: str | FsPath, adapter_names: Sequence[str] | None = None
    ) -> None:
        """Load the tensors of the adapters saved from this same model (resume training).

        The inverse of :meth:`save_pretrained` for resuming training (what Hugging Face
        ``Trainer`` does with ``resume_from_checkpoint``): every adapter of the model (or
        those in ``adapter_names``) is read from where ``save_pretrained`` writes it
        (``"default"`` from ``directory``, any other from ``directory/<name>``), whichever
        adapter is active. Nothing is re-attached: the parameters (and
        ``modules_to_save``) are overwritten in place and keep their ``requires_grad``, so
        an optimizer holding them stays valid. All adapters load, or none: every file is
        read and checked first, and a failure while writing puts everything back.

        Raises
        ------
        LoadError
            A missing adapter folder, missing or corrupted files, or an adapter saved with
            another configuration or on other layers.
        FingerprintError
            The frozen factors differ from those the adapter was trained with.

        Examples
        --------
        >>> import tempfile, torch
        >>> from torch import nn
        >>> from tera.adapters import TeRAConfig, adapt
        >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
        ...                                                             target_modules=["0"]))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model.save_pretrained(d)
        ...     with torch.no_grad(): _ = model.base_model[0].adapter.d[0].fill_(3.0)
        ...     model.load_adapter_weights(d)
        >>> model.base_model[0].adapter.d[0].tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        directory = FsPath(directory)
        names = self.adapter_names if adapter_names is None else list(adapter_names)
        for name in names:
            self._require(name)
        found = []
        for name in names:  # read and check every adapter before writing any
            folder = directory / io.adapter_folder(name)
            if not (folder / io.CONFIG_NAME).exists():
                raise LoadError(
                    f"{directory} holds no adapter {name!r} (save_pretrained writes it into "
                    f"{folder}); was it saved from this model? adapter_names=[...] loads "
                    "only the adapters given"
                )
            meta, tensors = _read_adapter(folder, self.base_model)
            config = config_from_dict(meta["config"])
            if config != self._configs[name]:
                raise LoadError(
                    f"the adapter in {folder} was saved with {config!r}, but this model's "
                    f"adapter {name!r} is {self._configs[name]!r}; load it with "
                    "from_pretrained() into a fresh base model"
                )
            saved = list(meta["targets"])
            here = [n for n, lay in self.adapter_layers.items() if name in lay.adapters]
            if sorted(saved) != sorted(here):
                raise LoadError(
                    f"the adapter in {folder} adapts {saved[:4]}... but this model's adapter "
                    f"{name!r} adapts {here[:4]}...; load it with from_pretrained() into a "
                    "fresh base model"
                )
            found.append((name, meta, tensors, folder))
        params = [p for name in names for _, p in self.adapter_parameters(name)]
        saved_modules = {m for _, meta, _, _ in found for m in meta.get("modules_to_save", [])}
        for mname in sorted({*self.modules_to_save, *saved_modules}):
            with contextlib.suppress(AttributeError):  # a missing one is refused by _restore
                params += self.base_model.get_submodule(mname).parameters()
        before = [p.detach().clone() for p in params]  # put back if a load fails midway
        put_back, kept = self.shared_factors.snapshot(), list(self.modules_to_save)
        try:
            for name, meta, tensors, folder in found:
                self._restore(meta, tensors, folder, name)
        except BaseException:
            with torch.no_grad():
                for p, value in zip(params, before, strict=True):
                    p.copy_(value)
            put_back()
            self.modules_to_save = kept
            raise

    def _restore(
        self,
        meta: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        directory: FsPath,
        adapter_name: str,
    ) -> None:
        others = {k for n in self._configs if n != adapter_name for k in self._factor_keys(n)}
        stored = tensors if meta.get("includes_factors") else None
        keys = self._factor_keys(adapter_name)
        self.shared_factors.restore(keys, meta, stored, others, str(directory))
        for i in range(len(meta["factor_keys"]) if stored is not None else 0):
            tensors.pop(f"{io.FACTOR_PREFIX}{i}")  # factors, not adapter parameters
        expected = {name: p for name, p in self.adapter_parameters(adapter_name)}
        for mname in meta.get("modules_to_save", []):
            try:
                module = self.base_model.get_submodule(mname)
            except AttributeError:
                raise LoadError(
                    f"the adapter in {directory} saves module '{mname}' (modules_to_save), "
                    "which this model does not have; load it into the architecture it was "
                    "trained on"
                ) from None
            for pname, p in module.named_parameters():
                expected[f"{io.SAVE_PREFIX}{mname}.{pname}"] = p
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise LoadError(
                f"{directory / io.WEIGHTS_NAME} does not fit the adapter: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, p in expected.items():
                value = tensors[name]
                if tuple(value.shape) != tuple(p.shape):
                    raise LoadError(
                        f"tensor '{name}' has shape {tuple(value.shape)} in the file but "
                        f"{tuple(p.shape)} here"
                    )
                p.copy_(io.cast_to(name, value, p, directory / io.WEIGHTS_NAME))
        self.modules_to_save = list(meta.get("modules_to_save", []))


def _read_adapter(
    directory: FsPath, model: nn.Module
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The meta and tensors of an adapter folder, tera's format or PEFT's (``peft_format``)."""
    if peft_format.is_peft_folder(directory):  # PEFT interop: read as tera's meta and tensors
        return peft_format.read_peft(directory, _plain_view(model))
    return io.read_adapter(directory)


def _plain_view(model: nn.Module) -> nn.Module:
    """``model`` as PEFT saw it: adapted layers answer as their base layers (no copy)."""
    if not any(isinstance(m, AdapterLinear) for m in model.modules()):
        return model
    return cast(nn.Module, _ModuleView(model))


class _ModuleView:
    """A read-only view of a model's module names where adapted layers are base layers."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        skip: list[str] = []
        for name, module in self._model.named_modules():
            if any(name.startswith(s + ".") for s in skip):
                continue
            if isinstance(module, AdapterLinear):
                skip.append(name)
                yield name, module.base_layer
            else:
                yield name, module

    def get_submodule(self, target: str) -> nn.Module:
        module = self._model.get_submodule(target)
        return module.base_layer if isinstance(module, AdapterLinear) else module


def _check_targets(
    model: nn.Module, meta: dict[str, Any], directory: FsPath
) -> dict[str, dict[str, int]]:
    """The saved adapter's layers, each checked against ``model`` (name and shape)."""
    targets: dict[str, dict[str, int]] = meta["targets"]
    for name, shape in targets.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise LoadError(
                f"the adapter in {directory} adapts '{name}', which this model does not "
                "have; load it into the architecture it was trained on"
            ) from None
        if isinstance(module, AdapterLinear):
            in_f, out_f = module.in_features, module.out_features
        else:
            in_f, out_f = linear_shape(module, name)
        if (in_f, out_f) != (shape["in_features"], shape["out_features"]):
            raise LoadError(
                f"layer '{name}' is {in_f} -> {out_f} in this model but "
                f"{shape['in_features']} -> {shape['out_features']} in the saved adapter"
            )
    return targets


def save_adapter(
    model: AdaptedModel, directory: str | FsPath, include_factors: bool = False
) -> None:
    """Save an adapted model's adapter: :meth:`AdaptedModel.save_pretrained`.

    Examples
    --------
    >>> import tempfile, os
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt, save_adapter
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
    ...                                                             target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     save_adapter(model, d)
    ...     sorted(os.listdir(d))
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    model.save_pretrained(directory, include_factors=include_factors)


def load_adapter(
    model: nn.Module, directory: str | FsPath, is_trainable: bool = False
) -> AdaptedModel:
    """Attach a saved adapter to ``model``: :meth:`AdaptedModel.from_pretrained`.

    Exported as ``tera.adapters.from_pretrained``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt, from_pretrained
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
    ...                                                             target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     type(from_pretrained(model.unload(), d)).__name__
    'AdaptedModel'
    """
    return AdaptedModel.from_pretrained(model, directory, is_trainable)


def load_adapter_weights(model: AdaptedModel, directory: str | FsPath) -> None:
    """Load saved tensors into a model that carries the same adapter (resume training).

    The same as :meth:`AdaptedModel.load_adapter_weights`.

    Examples
    --------
    >>> import tempfile
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt, load_adapter_weights
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
    ...                                                             target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     load_adapter_weights(model, d)
    """
    model.load_adapter_weights(directory)

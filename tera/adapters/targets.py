"""Which layers an adapter targets, wrapping and unwrapping them, and the parameter report.

Used alike by :func:`~tera.adapters.adapt` (a plain model), by
:meth:`~tera.adapters.AdaptedModel.add_adapter` (a model whose layers may already hold
adapters) and by loading (exact layer names from a saved adapter).

Examples
--------
>>> from torch import nn
>>> from tera.adapters import LoRAConfig
>>> from tera.adapters.targets import find_targets, parameter_report
>>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [name for name, _ in find_targets(mlp, ["0", "2"])]
['0', '2']
>>> parameter_report(mlp, LoRAConfig(r=2, target_modules=["0"])).adapter
24
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from tera.adapters import quantized, registry
from tera.adapters.batch import BASE_ADAPTER
from tera.adapters.config import AdapterConfig
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import AdapterLinear, is_conv1d, linear_shape, module_weight
from tera.errors import AdapterStateError, BackendError, TargetError
from tera.theory import params_percent

__all__ = [
    "ParameterReport",
    "attach",
    "check_adapter_name",
    "find_targets",
    "modules_to_save",
    "named_modules",
    "parameter_report",
    "set_submodule",
    "targets_to_add",
]


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


def named_modules(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for exact module names (e.g. read from a saved adapter).

    Raises
    ------
    TargetError
        For a name the model does not have.
    """
    found = []
    for name in names:
        try:
            found.append((name, model.get_submodule(name)))
        except AttributeError:
            raise TargetError(f"the model has no module named '{name}'") from None
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


def targets_to_add(
    model: nn.Module, config: AdapterConfig, targets: Sequence[str] | None
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` an extra adapter goes to: adapted layers (joined) or plain ones."""
    if targets is not None:
        return named_modules(model, targets)
    found = []
    for name, module in _modules_outside_adapters(model):
        if _matches(name, config.target_modules):
            if not isinstance(module, AdapterLinear) and not _is_linear(module):
                linear_shape(module, name)  # raises TargetError naming the module
            found.append((name, module))
    if not found:
        find_targets(model, config.target_modules)  # raises TargetError
    return found


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def check_adapter_name(name: object) -> None:
    """Refuse a name that is not a usable adapter name (:class:`AdapterStateError`)."""
    if not isinstance(name, str) or not name or "." in name or name == BASE_ADAPTER:
        raise AdapterStateError(
            f"adapter_name must be a non-empty string without dots, other than "
            f"{BASE_ADAPTER!r} (which names the base model in mixed batches); got {name!r}"
        )


def check_same_device(found: Sequence[tuple[str, nn.Module]]) -> None:
    """Refuse targets on several devices (the shared factors live on one)."""
    devices = {str(module_weight(m).device) for _, m in found}
    if len(devices) > 1:
        where = {n: str(module_weight(m).device) for n, m in found}
        raise BackendError(
            f"the target layers live on different devices ({', '.join(sorted(devices))}: "
            f"{dict(list(where.items())[:4])}); the frozen shared factors are stored once per "
            "shape, on one device: move the model to one device (model.to(device)) before adapt()"
        )


def attach(
    model: nn.Module,
    found: Sequence[tuple[str, nn.Module]],
    config: AdapterConfig,
    shared: SharedFactors,
    adapter_name: str,
    active_adapter: str,
) -> list[str]:
    """Build ``config``'s adapter on every found layer; the names of newly wrapped layers.

    A layer that is already an :class:`AdapterLinear` holds the new adapter too; a plain
    one is frozen and wrapped (its active adapter set to ``active_adapter``). The frozen
    factors come from ``shared`` (one storage per key).
    """
    cls = registry.adapter_class(config)
    wrapped: list[str] = []
    for name, module in found:
        layer = module if isinstance(module, AdapterLinear) else None
        base = layer.base_layer if layer is not None else module
        in_f, out_f = linear_shape(base, name)
        adapter = cls(config, in_f, out_f, shared, name, device=module_weight(base).device)
        if layer is None:
            module.requires_grad_(False)
            layer = AdapterLinear(
                module, adapter, dropout=config.dropout, shared=shared, adapter_name=adapter_name
            )
            layer.active_adapter = active_adapter
            set_submodule(model, name, layer)
            wrapped.append(name)
        else:
            layer.add_adapter(adapter_name, adapter, config.dropout)
    return wrapped


def modules_to_save(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of ``config.modules_to_save`` (:class:`TargetError` if none match)."""
    if not names:
        return []
    found = [(n, m) for n, m in model.named_modules() if n and _matches(n, names)]
    if not found:
        top = [n for n, _ in model.named_children()]
        raise TargetError(
            f"modules_to_save={list(names)!r} matched no module; top-level modules: {top}"
        )
    return found


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

    @classmethod
    def of(
        cls,
        layers: Mapping[str, tuple[int, int, int]],
        saved: Sequence[nn.Module],
        base: Iterator[nn.Parameter] | Sequence[nn.Parameter],
    ) -> ParameterReport:
        """From the adapted layers' counts, the saved modules and the base's parameters."""
        return cls(
            sum(t for _, _, t in layers.values()),
            sum(p.numel() for m in saved for p in m.parameters()),
            sum(quantized.numel(p) for p in base),  # 4-bit weights pack two per byte
            dict(layers),
        )


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
    cls = registry.adapter_class(config)
    layers: dict[str, tuple[int, int, int]] = {}
    for name, module in find_targets(model, config.target_modules):
        in_f, out_f = linear_shape(module, name)
        layers[name] = (in_f, out_f, cls.trainable_count(config, in_f, out_f))
    saved = [m for _, m in modules_to_save(model, config.modules_to_save)]
    return ParameterReport.of(layers, saved, list(model.parameters()))

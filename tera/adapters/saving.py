"""Saving and loading adapters as seen from a model: tera's folder format and PEFT's.

:mod:`tera.adapters.io` is the byte format (``adapter_config.json`` +
``adapter_model.safetensors``); :mod:`tera.adapters.peft_format` translates PEFT's folders.
This module maps them onto a model's adapters: the state and the meta data of one adapter,
checking a saved adapter's layers against a model, restoring its tensors (with the frozen
factors' fingerprint), and the one sequence every load runs (:func:`attach_saved`).

It works on anything shaped like an :class:`~tera.adapters.AdaptedModel`
(:class:`AdapterHolder`), so it never imports the model module.

Examples
--------
>>> import tempfile
>>> from torch import nn
>>> from tera.adapters import TeRAConfig, adapt
>>> from tera.adapters.saving import adapter_meta
>>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
...                                                             target_modules=["0"]))
>>> meta = adapter_meta(model, include_factors=False, adapter_name="default")
>>> meta["kind"], meta["targets"]
('tera', {'0': {'in_features': 16, 'out_features': 16}})
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from tera.adapters import io, peft_format
from tera.adapters.base import Adapter
from tera.adapters.config import AdapterConfig
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import AdapterLinear, linear_shape
from tera.adapters.registry import config_from_dict
from tera.errors import FormatError, LoadError

__all__ = [
    "AdapterHolder",
    "adapter_meta",
    "adapter_state",
    "attach_saved",
    "check_targets",
    "factor_keys",
    "load_weights",
    "read_adapter",
    "restore",
    "save",
]


class AdapterHolder(Protocol):
    """What saving and loading need of a model with adapters (an ``AdaptedModel``)."""

    base_model: nn.Module
    modules_to_save: list[str]

    @property
    def adapter_layers(self) -> dict[str, AdapterLinear]: ...  # noqa: D102

    @property
    def shared_factors(self) -> SharedFactors: ...  # noqa: D102

    @property
    def peft_config(self) -> dict[str, AdapterConfig]: ...  # noqa: D102

    def adapter_parameters(  # noqa: D102
        self, adapter_name: str | None = None
    ) -> Iterator[tuple[str, nn.Parameter]]: ...


H = TypeVar("H", bound=AdapterHolder)


# -- from a model to files -------------------------------------------------------------------
def factor_keys(model: AdapterHolder, adapter_name: str) -> list[str]:
    """The frozen factors an adapter uses, in the model's creation order."""
    used: set[str] = set()
    for layer in model.adapter_layers.values():
        if adapter_name in layer.adapters:
            adapter: Adapter = layer.adapters[adapter_name]  # type: ignore[assignment]
            used.update(adapter.factor_keys)
    return [k for k in model.shared_factors.keys() if k in used]  # noqa: SIM118


def adapter_state(
    model: AdapterHolder, include_factors: bool, adapter_name: str
) -> dict[str, torch.Tensor]:
    """The tensors saved for one adapter, named as in its file (CPU, contiguous)."""
    tensors = {key: p.detach() for key, p in model.adapter_parameters(adapter_name)}
    for mname in model.modules_to_save:
        for pname, p in model.base_model.get_submodule(mname).named_parameters():
            tensors[f"{io.SAVE_PREFIX}{mname}.{pname}"] = p.detach()
    if include_factors:
        shared = model.shared_factors
        for i, key in enumerate(factor_keys(model, adapter_name)):
            tensors[f"{io.FACTOR_PREFIX}{i}"] = shared.get(key).detach()
    return {k: v.to("cpu").contiguous() for k, v in tensors.items()}


def adapter_meta(model: AdapterHolder, include_factors: bool, adapter_name: str) -> dict[str, Any]:
    """The ``adapter_config.json`` content of one adapter."""
    from tera import __version__

    config = model.peft_config[adapter_name]
    keys = factor_keys(model, adapter_name)
    return {
        "library": "tera",
        "library_version": __version__,
        "kind": config.kind,
        "config": config.to_dict(),
        "seed": config.seed,
        "targets": {
            lname: {"in_features": layer.in_features, "out_features": layer.out_features}
            for lname, layer in model.adapter_layers.items()
            if adapter_name in layer.adapters
        },
        "modules_to_save": list(model.modules_to_save),
        "factor_keys": keys,
        **model.shared_factors.describe(keys),  # fingerprint (+ casts of a converted model)
        "includes_factors": include_factors,
    }


def save(
    model: AdapterHolder,
    directory: str | Path,
    names: Sequence[str],
    include_factors: bool,
    format: str,
    more: Mapping[str, io.Folder] | None = None,
) -> None:
    """Write adapters ``names``: ``"default"`` into ``directory``, others into subfolders.

    ``more`` (sub-folder -> files, the row adapters') is written in the same atomic save.
    """
    if format not in ("tera", "peft"):
        raise FormatError(f"format must be 'tera' or 'peft', got {format!r}")
    folders: dict[str, io.Folder] = dict(more or {})  # all adapters written as one atomic save
    for name in names:
        if format == "peft":
            state = adapter_state(model, True, name)
            folders[io.adapter_folder(name)] = peft_format.peft_folder(
                adapter_meta(model, True, name), state
            )
            continue
        # factors replaced since they were generated (a PEFT VeRA's projections) cannot be
        # regenerated from the seed: they are always saved
        keep = include_factors or model.shared_factors.replaced(factor_keys(model, name))
        state = adapter_state(model, keep, name)
        folders[io.adapter_folder(name)] = io.tera_folder(adapter_meta(model, keep, name), state)
    io.write_folders(directory, folders)


# -- from files to a model -------------------------------------------------------------------
def read_adapter(
    directory: Path, model: nn.Module
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The meta and tensors of an adapter folder, tera's format or PEFT's (``peft_format``)."""
    if peft_format.is_peft_folder(directory):  # read as tera's meta and tensors
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


def check_targets(
    model: nn.Module, meta: dict[str, Any], directory: Path
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


def attach_saved(
    model: nn.Module,
    directory: str | Path,
    attach: Callable[[AdapterConfig, list[str]], H],
    undo: Callable[[H], object],
    adapter_name: str,
    is_trainable: bool,
) -> H:
    """The one load sequence: read, rebuild the config, check the layers, attach, restore.

    ``attach(config, targets)`` builds the adapter on ``model``'s layers ``targets`` and
    returns the holder; if restoring the saved tensors then fails, ``undo(holder)`` removes
    what ``attach`` built and the error propagates (the model is as it was). The restored
    parameters keep ``requires_grad=is_trainable``.
    """
    directory = Path(directory)
    meta, tensors = read_adapter(directory, model)
    config = config_from_dict(meta["config"])
    targets = check_targets(model, meta, directory)
    holder = attach(config, list(targets))
    try:
        restore(holder, meta, tensors, directory, adapter_name)
    except Exception:
        undo(holder)
        raise
    for _, p in holder.adapter_parameters(adapter_name):
        p.requires_grad_(is_trainable)
    return holder


def load_weights(model: AdapterHolder, directory: str | Path, names: Sequence[str]) -> None:
    """Overwrite adapters' tensors in place from where ``save`` wrote them (all or none).

    Every adapter is read and checked first (its folder, configuration and layers); a
    failure while writing puts every parameter, factor and ``modules_to_save`` back.
    """
    directory = Path(directory)
    found = []
    for name in names:  # read and check every adapter before writing any
        folder = directory / io.adapter_folder(name)
        if not (folder / io.CONFIG_NAME).exists():
            raise LoadError(
                f"{directory} holds no adapter {name!r} (save_pretrained writes it into "
                f"{folder}); was it saved from this model? adapter_names=[...] loads "
                "only the adapters given"
            )
        meta, tensors = read_adapter(folder, model.base_model)
        config = config_from_dict(meta["config"])
        current = model.peft_config[name]
        if config != current:
            raise LoadError(
                f"the adapter in {folder} was saved with {config!r}, but this model's "
                f"adapter {name!r} is {current!r}; load it with from_pretrained() into a "
                "fresh base model"
            )
        saved = list(meta["targets"])
        here = [n for n, lay in model.adapter_layers.items() if name in lay.adapters]
        if sorted(saved) != sorted(here):
            raise LoadError(
                f"the adapter in {folder} adapts {saved[:4]}... but this model's adapter "
                f"{name!r} adapts {here[:4]}...; load it with from_pretrained() into a "
                "fresh base model"
            )
        found.append((name, meta, tensors, folder))
    params = [p for name in names for _, p in model.adapter_parameters(name)]
    saved_modules = {m for _, meta, _, _ in found for m in meta.get("modules_to_save", [])}
    for mname in sorted({*model.modules_to_save, *saved_modules}):
        with contextlib.suppress(AttributeError):  # a missing one is refused by restore
            params += model.base_model.get_submodule(mname).parameters()
    before = [p.detach().clone() for p in params]  # put back if a load fails midway
    put_back, kept = model.shared_factors.snapshot(), list(model.modules_to_save)
    try:
        for name, meta, tensors, folder in found:
            restore(model, meta, tensors, folder, name)
    except BaseException:
        with torch.no_grad():
            for p, value in zip(params, before, strict=True):
                p.copy_(value)
        put_back()
        model.modules_to_save = kept
        raise


def restore(
    model: AdapterHolder,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    directory: Path,
    adapter_name: str,
) -> None:
    """Copy a saved adapter's tensors into ``adapter_name``, its frozen factors checked."""
    others = {k for n in model.peft_config if n != adapter_name for k in factor_keys(model, n)}
    stored = tensors if meta.get("includes_factors") else None
    keys = factor_keys(model, adapter_name)
    model.shared_factors.restore(keys, meta, stored, others, str(directory))
    for i in range(len(meta["factor_keys"]) if stored is not None else 0):
        tensors.pop(f"{io.FACTOR_PREFIX}{i}")  # factors, not adapter parameters
    expected = {name: p for name, p in model.adapter_parameters(adapter_name)}
    for mname in meta.get("modules_to_save", []):
        try:
            module = model.base_model.get_submodule(mname)
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
    model.modules_to_save = list(meta.get("modules_to_save", []))

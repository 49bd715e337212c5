"""The one adapter registry: each adapter class registers itself under its ``kind``.

An adapter's config class is its :attr:`~tera.adapters.base.Adapter.config_class`, so this
one mapping answers every lookup: the adapter for a config (:func:`adapter_class`), the
config class for a saved ``kind`` (:func:`config_class`), and what an adapter is
(``uses_base_weight``, ``trainable_count``, ...). This module imports no adapter: the
adapter modules register with :func:`register` (importing :mod:`tera.adapters` imports them
all).

Examples
--------
>>> from tera.adapters import HiRAConfig
>>> from tera.adapters.registry import adapter_class, kinds
>>> kinds()
['hira', 'lora', 'tera', 'vera']
>>> adapter_class(HiRAConfig()).uses_base_weight
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tera.adapters.config import AdapterConfig
from tera.errors import ConfigError, LoadError

if TYPE_CHECKING:
    from tera.adapters.base import Adapter

__all__ = [
    "adapter_class",
    "adapter_class_for_kind",
    "config_class",
    "config_from_dict",
    "kinds",
    "register",
]

_ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register an adapter class under its ``kind`` (unique).

    Examples
    --------
    >>> from tera.adapters.registry import register
    >>> from tera.adapters.lora import LoRA
    >>> register(LoRA) is LoRA   # registering the same class again is harmless
    True
    """
    if not cls.kind:
        raise ConfigError(f"{cls.__name__} has no kind; set the class attribute kind = '...'")
    known = _ADAPTERS.get(cls.kind)
    if known is not None and known is not cls:
        raise ConfigError(
            f"adapter kind {cls.kind!r} is taken by {known.__name__}; give {cls.__name__} "
            "another kind"
        )
    _ADAPTERS[cls.kind] = cls
    return cls


def kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_ADAPTERS)


def adapter_class(config: object) -> type[Adapter]:
    """The adapter class for a config instance.

    Raises
    ------
    ConfigError
        If ``config`` is not an instance of a registered adapter's config class.
    """
    for cls in _ADAPTERS.values():
        if type(config) is cls.config_class:
            return cls
    names = ", ".join(cls.config_class.__name__ for cls in _ADAPTERS.values())
    raise ConfigError(
        f"config must be one of {names}, got {config!r} ({type(config).__name__}); build one, "
        "e.g. TeRAConfig(in_mode=..., out_mode=...), or rebuild a saved one with "
        "config_from_dict(...)"
    )


def adapter_class_for_kind(kind: object) -> type[Adapter]:
    """The adapter class registered as ``kind`` (e.g. read from a saved adapter).

    Raises
    ------
    LoadError
        For an unknown kind.
    """
    found = _ADAPTERS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise LoadError(f"unknown adapter kind {kind!r}; known kinds: {', '.join(kinds())}")
    return found


def config_class(kind: object) -> type[AdapterConfig]:
    """The config class of the adapter registered as ``kind``.

    Raises
    ------
    LoadError
        For an unknown kind.
    """
    return adapter_class_for_kind(kind).config_class


def config_from_dict(data: Mapping[str, Any]) -> AdapterConfig:
    """Rebuild a config from :meth:`AdapterConfig.to_dict` output.

    Raises
    ------
    LoadError
        For an unknown ``kind`` or unknown fields.

    Examples
    --------
    >>> from tera.adapters import LoRAConfig, config_from_dict
    >>> config_from_dict({"kind": "lora", "r": 4}) == LoRAConfig(r=4)
    True
    """
    if not isinstance(data, Mapping):
        raise LoadError(
            f"an adapter config must be a dict such as {{'kind': 'tera', ...}}, "
            f"got {type(data).__name__}"
        )
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = config_class(kind)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise LoadError(
            f"{kind} config has unknown field(s) {unknown}; known fields: {sorted(known)} "
            "(was it written by a newer tera?)"
        )
    for name in ("target_modules", "modules_to_save", "ranks", "in_modes", "out_modes"):
        value = fields.get(name)
        if isinstance(value, list):
            fields[name] = tuple(value)
    return cls(**fields)

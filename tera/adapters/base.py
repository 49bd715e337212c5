"""The contract every adapter fulfils: trainable operands, shared factors, a network."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from tera.adapters.config import AdapterConfig
from tera.adapters.engine import Network
from tera.adapters.factors import SharedFactors, counter_uniform

__all__ = ["Adapter", "kaiming_uniform"]


def kaiming_uniform(key: str, shape: tuple[int, int], fan_in: int) -> torch.Tensor:
    """Kaiming-uniform as torch's ``nn.Linear`` default (``a = sqrt(5)``): ``U(±1/sqrt(fan_in))``.

    Drawn from the bit-exact counter-based stream of :func:`~tera.adapters.factors.counter_uniform`.

    Examples
    --------
    >>> from tera.adapters.base import kaiming_uniform
    >>> float(kaiming_uniform("k", (4, 16), fan_in=16).abs().max()) <= 0.25
    True
    """
    return counter_uniform(key, shape, bound=1.0 / math.sqrt(fan_in))


class Adapter(nn.Module):
    """Base class: one adapter attached to one layer ``in_features -> out_features``.

    Subclasses create their trainable parameters (registered on the module, initial values
    from ``_initial_parameters()``) and their frozen shared factors (requested from
    :class:`~tera.adapters.factors.SharedFactors` by key) in ``_build``, which the
    constructor calls; they describe ``dW`` in :meth:`network` (subscripts, shapes and the
    evaluator they declare) and list its current tensors in :meth:`operands`, in the
    network's order (the per-call lookup). They never evaluate anything themselves: the
    engine does.
    """

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    uses_base_weight: ClassVar[bool] = False
    """Whether dW depends on the base weight, as HiRA's does.

    Merging then keeps a copy to unmerge exactly, and an adapter file alone (without its
    base model) does not determine dW.
    """

    def __init__(
        self,
        config: AdapterConfig,
        in_features: int,
        out_features: int,
        shared: SharedFactors,
        layer_name: str,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.in_features = in_features
        self.out_features = out_features
        self.layer_name = layer_name
        self._device = device
        object.__setattr__(self, "_shared", shared)  # a reference, not a registered child
        self._factor_keys: list[str] = []
        self._build()

    def _build(self) -> None:
        """Create the trainable parameters and request the shared factors (per adapter)."""
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------
    def _shared_factor(self, key: str, build: Callable[[], torch.Tensor]) -> int:
        """Request the factor ``key`` (built the first time); its index in ``shared.tensors()``."""
        shared: SharedFactors = self._shared  # type: ignore[assignment]
        shared.get_or_create(key, build, self._device)
        if key not in self._factor_keys:
            self._factor_keys.append(key)
        return shared.index(key)

    def _factor(self, key: str) -> torch.Tensor:
        shared: SharedFactors = self._shared  # type: ignore[assignment]
        return shared.get(key)

    def _param(self, value: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(value.to(self._device) if self._device is not None else value)

    def _low_rank_pair(self, r: int) -> dict[str, torch.Tensor]:
        """Initial ``A`` (r x in, Kaiming-uniform, seeded per layer) and ``B`` (out x r, zeros).

        The init rule LoRA and HiRA share: ``B A = 0`` at the start.
        """
        key = f"{self.kind}|A|{self.layer_name}|seed={self.config.seed}"
        a = kaiming_uniform(key, (r, self.in_features), self.in_features)
        return {"A": a, "B": torch.zeros(self.out_features, r)}

    def _initial_parameters(self) -> dict[str, torch.Tensor]:
        """The trainable tensors' initial values (CPU), named as in ``named_parameters()``."""
        raise NotImplementedError

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Write the initial values into the trainable tensors again (deterministic, seeded).

        What a model adapted on the ``meta`` device needs once it has memory (FSDP's
        ``param_init_fn`` convention; :meth:`~tera.adapters.AdaptedModel.to_empty` calls it).
        """
        values = self._initial_parameters()
        for name, p in self.named_parameters():
            if not p.is_meta:
                p.copy_(values[name].to(p.device, p.dtype))

    # -- the contract ----------------------------------------------------------------------
    @property
    def shared(self) -> SharedFactors:
        """The model-wide store of frozen shared factors."""
        shared: SharedFactors = self._shared  # type: ignore[assignment]
        return shared

    @property
    def factor_keys(self) -> list[str]:
        """Keys of the shared factors this adapter uses."""
        return list(self._factor_keys)

    def network(self, base_weight: torch.Tensor) -> Network:
        """``dW`` as a :class:`~tera.adapters.engine.Network`, with the evaluator it declares.

        ``base_weight`` is the layer's ``out x in`` weight (used by HiRA).
        """
        raise NotImplementedError

    def operands(self, base_weight: torch.Tensor) -> list[torch.Tensor]:
        """The network's current operands, in its order (called on every forward).

        ``base_weight`` is the layer's ``out x in`` weight (used by HiRA).
        """
        raise NotImplementedError

    @classmethod
    def trainable_count(cls, config: AdapterConfig, in_features: int, out_features: int) -> int:
        """Trainable parameters for one layer (from shapes only, works for ``meta`` models)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"kind={self.kind}, in={self.in_features}, out={self.out_features}"

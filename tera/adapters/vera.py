"""VeRA (Kopiczko et al., 2024): ``dW = diag(b) B diag(d) A`` with A, B frozen and shared."""

from __future__ import annotations

from functools import partial

import torch

from tera.adapters.base import Adapter, kaiming_uniform
from tera.adapters.config import VeRAConfig
from tera.adapters.engine import ChainEvaluator, Network
from tera.adapters.registry import register
from tera.theory import vera_parameter_count

__all__ = ["VeRA", "projection_keys"]


def projection_keys(r: int, in_features: int, out_features: int, seed: int) -> tuple[str, str]:
    """The shared-factor keys of VeRA's frozen ``A`` (r x in) and ``B`` (out x r).

    One pair of factors exists per key, so layers with the same ``in_features`` share ``A``
    and layers with the same ``out_features`` share ``B``.

    Examples
    --------
    >>> from tera.adapters.vera import projection_keys
    >>> projection_keys(8, 32, 16, seed=0)
    ('vera|A|8x32|seed=0', 'vera|B|16x8|seed=0')
    """
    return f"vera|A|{r}x{in_features}|seed={seed}", f"vera|B|{out_features}x{r}|seed={seed}"


@register
class VeRA(Adapter):
    """VeRA on one layer: trainable ``b`` (out, zeros) and ``d`` (r, ``d_initial``).

    The frozen ``A`` (r x in) and ``B`` (out x r) are Kaiming-uniform and shared by every
    layer with the same ``in_features`` (for A) or ``out_features`` (for B).

    Examples
    --------
    >>> from tera.adapters import VeRAConfig
    >>> from tera.adapters.factors import SharedFactors
    >>> from tera.adapters.vera import VeRA
    >>> shared = SharedFactors()
    >>> a = VeRA(VeRAConfig(r=4), 16, 8, shared, "q")
    >>> b = VeRA(VeRAConfig(r=4), 16, 8, shared, "v")
    >>> B_a, B_b = a.network(torch.empty(0)).operands[1], b.network(torch.empty(0)).operands[1]
    >>> B_a.data_ptr() == B_b.data_ptr()
    True
    """

    kind = "vera"
    config_class = VeRAConfig

    config: VeRAConfig

    def _build(self) -> None:
        config, in_features, out_features = self.config, self.in_features, self.out_features
        r, seed = config.r, config.seed
        self._key_A, self._key_B = projection_keys(r, in_features, out_features, seed)
        self._index_A = self._shared_factor(
            self._key_A, partial(kaiming_uniform, self._key_A, (r, in_features), in_features)
        )
        self._index_B = self._shared_factor(
            self._key_B, partial(kaiming_uniform, self._key_B, (out_features, r), r)
        )
        init = self._initial_parameters()
        self.b, self.d = self._param(init["b"]), self._param(init["d"])

    def _initial_parameters(self) -> dict[str, torch.Tensor]:
        r = self.config.r
        return {
            "b": torch.zeros(self.out_features),
            "d": torch.full((r,), float(self.config.d_initial)),
        }

    def operands(self, base_weight: torch.Tensor) -> list[torch.Tensor]:
        """``[b, B, d, A]``."""
        factors = self.shared.tensors()
        return [self.b, factors[self._index_B], self.d, factors[self._index_A]]

    def network(self, base_weight: torch.Tensor) -> Network:
        """``dW[o, i] = b[o] sum_r B[o, r] d[r] A[r, i]``, pushed as a chain of ``F.linear``."""
        return Network(
            ("o", "or", "r", "ri"),
            tuple(self.operands(base_weight)),
            "i",
            "o",
            (self.in_features,),
            (self.out_features,),
            evaluator=ChainEvaluator,
        )

    @classmethod
    def trainable_count(cls, config: VeRAConfig, in_features: int, out_features: int) -> int:  # type: ignore[override]
        """``out + r``."""
        return vera_parameter_count(in_features, out_features, config.r)

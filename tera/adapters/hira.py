"""HiRA (Huang et al., 2025): ``dW = W0 ⊙ (B A)``, a Hadamard product with the base weight."""

from __future__ import annotations

import torch

from tera.adapters.base import Adapter
from tera.adapters.config import HiRAConfig
from tera.adapters.engine import Network
from tera.adapters.registry import register
from tera.theory import hira_parameter_count

__all__ = ["HiRA"]


@register
class HiRA(Adapter):
    """HiRA on one layer: trainable ``A`` (r x in, Kaiming-uniform) and ``B`` (out x r, zeros).

    Examples
    --------
    >>> from tera.adapters import HiRAConfig
    >>> from tera.adapters.factors import SharedFactors
    >>> from tera.adapters.hira import HiRA
    >>> HiRA(HiRAConfig(r=2), 16, 8, SharedFactors(), "layer").network(torch.ones(8, 16)).subscripts
    ('oi', 'or', 'ri')
    """

    kind = "hira"
    config_class = HiRAConfig
    uses_base_weight = True

    config: HiRAConfig

    def _build(self) -> None:
        init = self._initial_parameters()
        self.A, self.B = self._param(init["A"]), self._param(init["B"])

    def _initial_parameters(self) -> dict[str, torch.Tensor]:
        return self._low_rank_pair(self.config.r)

    def operands(self, base_weight: torch.Tensor) -> list[torch.Tensor]:
        """``[W0 (detached), B, A]``."""
        return [base_weight.detach(), self.B, self.A]

    def network(self, base_weight: torch.Tensor) -> Network:
        """``dW[o, i] = W0[o, i] * sum_r B[o, r] A[r, i]`` (the planned einsum evaluates it)."""
        return Network(
            ("oi", "or", "ri"),
            tuple(self.operands(base_weight)),
            "i",
            "o",
            (self.in_features,),
            (self.out_features,),
        )

    @classmethod
    def trainable_count(cls, config: HiRAConfig, in_features: int, out_features: int) -> int:  # type: ignore[override]
        """``r * (in + out)``."""
        return hira_parameter_count(in_features, out_features, config.r)

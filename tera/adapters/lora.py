"""LoRA (Hu et al., 2022): ``dW = B A * alpha / r``; A Kaiming-uniform, B zeros."""

from __future__ import annotations

import torch

from tera.adapters.base import Adapter
from tera.adapters.config import LoRAConfig
from tera.adapters.engine import ChainEvaluator, Network
from tera.adapters.registry import register
from tera.theory import lora_parameter_count

__all__ = ["LoRA"]


@register
class LoRA(Adapter):
    """LoRA on one layer: trainable ``A`` (r x in) and ``B`` (out x r).

    Examples
    --------
    >>> from tera.adapters import LoRAConfig
    >>> from tera.adapters.factors import SharedFactors
    >>> from tera.adapters.lora import LoRA
    >>> lora = LoRA(LoRAConfig(r=4), 16, 8, SharedFactors(), "layer")
    >>> tuple(lora.A.shape), tuple(lora.B.shape), int(torch.count_nonzero(lora.B))
    ((4, 16), (8, 4), 0)
    """

    kind = "lora"
    config_class = LoRAConfig

    config: LoRAConfig

    def _build(self) -> None:
        init = self._initial_parameters()
        self.A, self.B = self._param(init["A"]), self._param(init["B"])
        self.scaling = self.config.scaling

    def _initial_parameters(self) -> dict[str, torch.Tensor]:
        return self._low_rank_pair(self.config.r)

    def operands(self, base_weight: torch.Tensor) -> list[torch.Tensor]:
        """``[A, B]``."""
        return [self.A, self.B]

    def network(self, base_weight: torch.Tensor) -> Network:
        """``dW[o, i] = sum_r B[o, r] A[r, i] * alpha / r``, pushed as a chain of ``F.linear``."""
        return Network(
            ("ri", "or"),
            tuple(self.operands(base_weight)),
            "i",
            "o",
            (self.in_features,),
            (self.out_features,),
            self.scaling,
            evaluator=ChainEvaluator,
        )

    @classmethod
    def trainable_count(cls, config: LoRAConfig, in_features: int, out_features: int) -> int:  # type: ignore[override]
        """``r * (in + out)``."""
        return lora_parameter_count(in_features, out_features, config.r)

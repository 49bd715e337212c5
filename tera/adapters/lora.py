"""LoRA (Hu et al., 2022): ``dW = B A * alpha / r``; A Kaiming-uniform, B zeros."""

from __future__ import annotations

import torch

from tera.adapters.base import Adapter
from tera.adapters.config import LoRAConfig
from tera.adapters.engine import Network
from tera.theory import lora_parameter_count

__all__ = ["LoRA"]


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
        config = self.config
        self.A, self.B = self._low_rank_pair(config.r)
        self.scaling = config.scaling

    def network(self, base_weight: torch.Tensor) -> Network:
        """``dW[o, i] = sum_r B[o, r] A[r, i] * alpha / r``."""
        return Network(
            ("ri", "or"),
            (self.A, self.B),
            "i",
            "o",
            (self.in_features,),
            (self.out_features,),
            self.scaling,
        )

    @classmethod
    def trainable_count(cls, config: LoRAConfig, in_features: int, out_features: int) -> int:  # type: ignore[override]
        """``r * (in + out)``."""
        return lora_parameter_count(in_features, out_features, config.r)

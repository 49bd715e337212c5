r"""TeRA (paper Eq. 5): ``dW = unfold_[N;k](G x_1 diag(d_1) A_1 ... x_N diag(d_N) A_N)``.

The layer ``in_features -> out_features`` is tensorized as the input modes
``I_1..I_k`` followed by the output modes ``I_{k+1}..I_N``, so in the paper's orientation
(``x @ dW``) the update is the ``[N;k]`` unfolding; torch's ``out x in`` weight gets its
transpose. The core ``G`` (R_1 x ... x R_N) and factors ``A_i`` (R_i x I_i) are frozen,
random and shared by every adapted layer with the same shape and scheme; only the vectors
``d_i`` (length R_i) train. All ``d_i`` start at one except ``d_{zero_init}``, which starts
at zero, so ``dW = 0`` at initialization.

**Scale.** Each ``A_i`` is Kaiming-uniform with its fan-in taken along the rank index
(``U(±sqrt(3 / R_i))``, variance ``1 / R_i``) and ``G`` is uniform, so the entries of ``dW``
at ``d = 1`` have the same variance in expectation for every tensorization. One draw of
many small factors still strays far from its expectation (a (2, 2, ..., 2) scheme of a
1024 x 1024 layer came out 4x too small), so the core is then rescaled so that the
root-mean-square of ``dW`` at ``d = 1`` is *exactly* ``scale``, whatever the tensorization.
The raw paper initialization (each factor Kaiming on its own fan-in) gives a scale that
varies by more than 10x between schemes of one layer, which decides whether TeRA learns at
all (FINDINGS). The default ``scale = 1 / sqrt(in_features)`` makes a change
of ``O(1)`` in the d's move the layer by about as much as its Kaiming-initialized weight;
with AdamW the d's move by about ``lr`` per step, so the paper's learning rates
(1e-3 .. 2e-4) reach such a change within a few thousand steps.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import partial

import opt_einsum
import torch
from torch import nn

from tera.adapters.base import Adapter
from tera.adapters.config import TeRAConfig
from tera.adapters.engine import Network
from tera.adapters.factors import counter_uniform
from tera.adapters.registry import register
from tera.adapters.tera_kernel import TuckerEvaluator
from tera.errors import ConfigError
from tera.tn import multi_mode_product

__all__ = ["TeRA", "resolve_scheme"]


def _round_mantissa(x: float, bits: int = 16) -> float:
    """Round to ``bits`` significant bits, so float64 noise of another BLAS cannot leak in."""
    mantissa, exponent = math.frexp(x)
    return math.ldexp(round(mantissa * (1 << bits)) / (1 << bits), exponent)


def _host_factors(
    current: Callable[[], list[torch.Tensor]], builds: list[Callable[[], torch.Tensor]]
) -> list[torch.Tensor]:
    """The factors' float32 values on the CPU: copied when they hold them, else regenerated.

    A factor on the ``meta`` device (a model built without memory) or converted to another
    dtype has no (exact) values to copy; its bit-exact generator gives them again.
    """
    hosted = []
    for tensor, build in zip(current(), builds, strict=True):
        usable = not tensor.is_meta and tensor.dtype == torch.float32
        hosted.append(tensor.detach().to("cpu") if usable else build())
    return hosted


def _normalized_core(
    key: str, factors: Callable[[], list[torch.Tensor]], scale: float
) -> torch.Tensor:
    """The core G, rescaled so that ``dW`` at ``d = 1`` has root-mean-square ``scale`` exactly.

    ``||dW||_F^2 = <G, G x_1 A_1 A_1^T ... x_N A_N A_N^T>`` is computed in float64 from the
    small Gram matrices (never forming ``dW``); the correction factor is rounded to 16
    significant bits and applied in float32, so regeneration stays bit-exact everywhere.
    """
    hosted = [f.double() for f in factors()]  # float32 values, on the CPU
    ranks = tuple(int(f.shape[0]) for f in hosted)
    core = counter_uniform(key, ranks, bound=math.sqrt(3.0))
    g64 = core.double().numpy()
    grams = [(f @ f.T).numpy() for f in hosted]
    energy = float((g64 * multi_mode_product(g64, grams)).sum())
    n_entries = math.prod(int(f.shape[1]) for f in hosted)
    correction = _round_mantissa(scale * math.sqrt(n_entries / energy))
    return core * torch.tensor(correction, dtype=torch.float32)


def resolve_scheme(
    config: TeRAConfig, in_features: int, out_features: int, layer_name: str = "?"
) -> tuple[tuple[int, ...], int, tuple[int, ...], int]:
    """The layer's tensorization under ``config``: ``(modes, k, ranks, zero_index)``.

    The same as :meth:`TeRAConfig.scheme <tera.adapters.TeRAConfig.scheme>` (which calls
    :func:`tera.theory.tera_scheme`, the one tensorization function).

    Examples
    --------
    >>> from tera.adapters import TeRAConfig
    >>> from tera.adapters.tera import resolve_scheme
    >>> resolve_scheme(TeRAConfig(in_mode=4096, out_mode=8), 4096, 4096)
    ((4096, 8, 8, 8, 8), 1, (4096, 8, 8, 8, 8), 4)
    """
    return config.scheme(in_features, out_features, layer_name)


@functools.lru_cache(maxsize=64)
def _tucker_subscripts(n: int, k: int) -> tuple[tuple[str, ...], str, str]:
    """Subscripts of an order-``n`` Tucker network (core, then ``d_j``, ``A_j`` per mode)."""
    rank_syms = [opt_einsum.get_symbol(j) for j in range(n)]
    mode_syms = [opt_einsum.get_symbol(n + j) for j in range(n)]
    subscripts = ["".join(rank_syms)]
    for j in range(n):
        subscripts += [rank_syms[j], rank_syms[j] + mode_syms[j]]
    return tuple(subscripts), "".join(mode_syms[:k]), "".join(mode_syms[k:])


@register
class TeRA(Adapter):
    """TeRA on one layer: trainable vectors ``d[0..N-1]``, frozen shared ``G`` and ``A_i``.

    Examples
    --------
    >>> from tera.adapters import TeRAConfig
    >>> from tera.adapters.factors import SharedFactors
    >>> from tera.adapters.tera import TeRA
    >>> t = TeRA(TeRAConfig(in_mode=64, out_mode=4), 64, 16, SharedFactors(), "layer")
    >>> t.modes, [tuple(d.shape) for d in t.d], int(torch.count_nonzero(t.d[-1]))
    ((64, 4, 4), [(64,), (4,), (4,)], 0)
    """

    kind = "tera"
    config_class = TeRAConfig

    config: TeRAConfig

    def _build(self) -> None:
        config, in_features, out_features = self.config, self.in_features, self.out_features
        layer_name = self.layer_name
        modes, k, ranks, zero = resolve_scheme(config, in_features, out_features, layer_name)
        self.modes, self.k, self.ranks, self.zero_index = modes, k, ranks, zero
        scale = config.scale if config.scale is not None else 1.0 / math.sqrt(in_features)
        self.scale = float(scale)
        scheme = f"{out_features}x{in_features}|modes={modes}|k={k}|ranks={ranks}"
        suffix = f"{scheme}|scale={self.scale!r}|seed={config.seed}"
        if config.init == "paper":
            suffix = f"{scheme}|init=paper|seed={config.seed}"
        if config.factors == "unique":  # one set per layer: the layer's name is in the key
            suffix += f"|layer={layer_name}"
        elif config.factors == "identity" and ranks != modes:
            raise ConfigError(
                f"factors='identity' needs full ranks (R_i = I_i) but layer '{layer_name}' "
                f"has ranks {ranks} for modes {modes}; use ranks=None"
            )
        self._key_G = f"tera|G|{suffix}"
        self._keys_A = [f"tera|A{i}|{suffix}" for i in range(len(modes))]
        if config.factors == "identity":
            self._keys_A = [f"tera|I|{i}" for i in modes]
        builds: list[Callable[[], torch.Tensor]] = []
        self._index_A: list[int] = []
        for key, r, i in zip(self._keys_A, ranks, modes, strict=True):
            build: Callable[[], torch.Tensor]
            if config.factors == "identity":
                build = partial(torch.eye, i, dtype=torch.float32)
            elif config.init == "paper":  # Kaiming-uniform on the factor's own fan-in I_i
                build = partial(counter_uniform, key, (r, i), 1.0 / math.sqrt(i))
            else:  # Kaiming-uniform on the rank index: variance 1 / R_i
                build = partial(counter_uniform, key, (r, i), math.sqrt(3.0 / r))
            builds.append(build)
            self._index_A.append(self._shared_factor(key, build))
        shared, keys = self.shared, list(self._keys_A)
        factors = partial(_host_factors, lambda: [shared.get(key) for key in keys], builds)
        core: Callable[[], torch.Tensor]
        if config.init == "paper":  # the core as drawn, unit variance
            core = partial(counter_uniform, self._key_G, tuple(ranks), math.sqrt(3.0))
        else:
            core = partial(_normalized_core, self._key_G, factors, self.scale)
        self._index_G = self._shared_factor(self._key_G, core)
        self.d = nn.ParameterList([self._param(v) for v in self._initial_parameters().values()])

    def _initial_parameters(self) -> dict[str, torch.Tensor]:
        return {
            f"d.{n}": torch.zeros(r) if n == self.zero_index else torch.ones(r)
            for n, r in enumerate(self.ranks)
        }

    def operands(self, base_weight: torch.Tensor) -> list[torch.Tensor]:
        """``[G, d_1, A_1, ..., d_N, A_N]``."""
        factors = self.shared.tensors()
        operands = [factors[self._index_G]]
        for d, index in zip(self.d, self._index_A, strict=True):
            operands += (d, factors[index])
        return operands

    def network(self, base_weight: torch.Tensor) -> Network:
        """Eq. (11): ``dW(i_1..i_N) = sum_r G(r) prod_n d_n(r_n) A_n(r_n, i_n)``.

        Evaluated by TeRA's Tucker kernel (:class:`~tera.adapters.tera_kernel.TuckerEvaluator`).
        """
        subscripts, in_subs, out_subs = _tucker_subscripts(len(self.modes), self.k)
        return Network(
            subscripts,
            tuple(self.operands(base_weight)),
            in_subs,
            out_subs,
            tuple(self.modes[: self.k]),
            tuple(self.modes[self.k :]),
            evaluator=TuckerEvaluator,
        )

    @classmethod
    def trainable_count(cls, config: TeRAConfig, in_features: int, out_features: int) -> int:  # type: ignore[override]
        """``sum R_i`` for this layer's scheme."""
        return sum(resolve_scheme(config, in_features, out_features)[2])

    def extra_repr(self) -> str:
        """Shown by ``print(model)``."""
        return f"{super().extra_repr()}, modes={self.modes}, k={self.k}, ranks={self.ranks}"

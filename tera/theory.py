r"""The TeRA paper's theorems as functions: rank bound, parameter counts, error bound.

* Theorem 1 (:func:`rank_bound`): ``rank(dW_[N;k]) <= min(prod R[:k], prod R[k:])``.
* Theorem 2: with ``R_i = I_i >= 2``, ``sum R_i <= J1 + J2``
  (:func:`tera_parameter_count` versus :func:`vera_parameter_count` and friends).
* Theorem 3 (:func:`tera_error_bound`): an upper bound on the best TeRA approximation error
  of a target update ``W*``, with the vectors ``d_i`` that achieve it.

Parameter counts are per adapted layer of ``in_features -> out_features`` (a torch
``nn.Linear``'s weight is ``out_features x in_features``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from tera.errors import RankError, ShapeError, TensorizationError
from tera.tn import kron, rank1_approx, split_dim, suggest_modes, unfold

__all__ = [
    "TeraErrorBound",
    "TeraScheme",
    "hira_parameter_count",
    "lora_parameter_count",
    "params_percent",
    "rank_bound",
    "tera_error_bound",
    "tera_modes",
    "tera_parameter_count",
    "tera_scheme",
    "vera_parameter_count",
]


def _positive_ints(values: Sequence[int], name: str, minimum: int = 1) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out:
        raise RankError(f"{name} is empty; give at least one value")
    bad = [v for v in out if v < minimum]
    if bad:
        raise RankError(f"{name} {out} contains {bad}; every value must be >= {minimum}")
    return out


def rank_bound(ranks: Sequence[int], k: int) -> int:
    r"""Theorem 1: the largest rank ``unfold(dW, k)`` can have, ``min(prod R[:k], prod R[k:])``.

    Parameters
    ----------
    ranks : sequence of int
        Tucker ranks ``(R_1, ..., R_N)``.
    k : int
        Number of leading modes that form the rows, ``1 <= k < N``.

    Returns
    -------
    int
        The bound; ``min(J1, J2)`` (full rank) when ``R_i = I_i``.

    Examples
    --------
    >>> from tera.theory import rank_bound
    >>> rank_bound((4096, 8, 8, 8, 8), k=1)   # full rank for a 4096 x 4096 update
    4096
    >>> rank_bound((8, 8, 2, 2), k=2)
    4
    """
    rank_t = _positive_ints(ranks, "ranks")
    if not 1 <= k < len(rank_t):
        raise ShapeError(f"k={k} must satisfy 1 <= k < N = {len(rank_t)}")
    return min(math.prod(rank_t[:k]), math.prod(rank_t[k:]))


class TeraScheme(NamedTuple):
    """A layer's TeRA tensorization: modes (input modes first), ``k`` and Tucker ranks.

    Attributes
    ----------
    modes : tuple of int
        ``(I_1, ..., I_N)``: the input modes, then the output modes.
    k : int
        Number of input modes.
    ranks : tuple of int
        ``(R_1, ..., R_N)`` with ``1 <= R_i <= I_i``.

    Examples
    --------
    >>> from tera.theory import TeraScheme, tera_scheme
    >>> tera_scheme(64, 16, in_mode=64, out_mode=4) == TeraScheme((64, 4, 4), 1, (64, 4, 4))
    True
    """

    modes: tuple[int, ...]
    k: int
    ranks: tuple[int, ...]


def tera_scheme(
    in_features: int,
    out_features: int,
    in_mode: int | None = None,
    out_mode: int | None = None,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    ranks: Sequence[int] | None = None,
    layer_name: str | None = None,
    suggest_with: tuple[int, int] | None = None,
) -> TeraScheme:
    """TeRA's tensorization of a layer: the one function theory, configs and the adapter use.

    Input modes then output modes (paper Table 9). Equal modes come from
    :func:`tera.tn.split_dim` (``in_mode``/``out_mode``: a mode size >= the dimension keeps
    it whole); explicit, unequal modes may be given instead (``in_modes``/``out_modes``).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    in_mode, out_mode : int, optional
        Equal mode sizes (exactly one of ``in_mode``/``in_modes`` per side).
    in_modes, out_modes : sequence of int, optional
        Explicit modes whose product is the dimension.
    ranks : sequence of int, optional
        Tucker ranks ``1 <= R_i <= I_i``; ``None`` for ``R_i = I_i`` (Theorem 1's full rank).
    layer_name : str, optional
        The layer this is for: the errors then name it and say how to fix the adapter's
        :class:`~tera.adapters.TeRAConfig`.
    suggest_with : tuple of int, optional
        The (input, output) mode sizes to suggest explicit modes with in those errors
        (the config's ``in_mode``/``out_mode``); by default the largest mode given.

    Returns
    -------
    TeraScheme

    Raises
    ------
    TensorizationError
        A dimension that the modes do not split.
    RankError
        Ranks that do not fit the modes.

    Examples
    --------
    >>> from tera.theory import tera_scheme
    >>> tera_scheme(4096, 4096, in_mode=4096, out_mode=8)
    TeraScheme(modes=(4096, 8, 8, 8, 8), k=1, ranks=(4096, 8, 8, 8, 8))
    >>> tera_scheme(576, 192, in_modes=(8, 8, 9), out_mode=192, ranks=(4, 4, 4, 8)).k
    3
    """
    sides = []
    for side, (size, mode, given, name) in enumerate(
        [(in_features, in_mode, in_modes, "in"), (out_features, out_mode, out_modes, "out")]
    ):
        if (mode is None) == (given is None):
            raise TensorizationError(f"give exactly one of {name}_mode= or {name}_modes=")
        if given is not None:
            mode_t = _positive_ints(given, f"{name}_modes")
            if math.prod(mode_t) != size:
                if layer_name is None:
                    where = f"{name}_features is {size}"
                else:
                    hint = suggest_with[side] if suggest_with else max(mode_t)
                    where = (
                        f"layer '{layer_name}' has {name}_features={size}; use a dict for "
                        f"layers of several sizes, e.g. "
                        f"{name}_modes={{{size}: {suggest_modes(size, hint)}}}"
                    )
                raise TensorizationError(
                    f"{name}_modes {mode_t} multiply to {math.prod(mode_t)} but {where}"
                )
            sides.append(mode_t)
            continue
        assert mode is not None
        try:
            sides.append(split_dim(size, mode))
        except TensorizationError as err:
            if layer_name is None:
                raise
            raise TensorizationError(
                f"layer '{layer_name}': {name}_features={size} with {name}_mode={mode}: "
                f"{err}; set {name}_mode= or {name}_modes= in TeRAConfig"
            ) from None
    modes, k = sides[0] + sides[1], len(sides[0])
    if ranks is None:
        return TeraScheme(modes, k, modes)
    rank_t = _positive_ints(ranks, "ranks")
    if len(rank_t) != len(modes) or any(r > i for r, i in zip(rank_t, modes, strict=True)):
        if layer_name is None:
            raise RankError(f"ranks {rank_t} must give one rank 1..I_i per mode of {modes}")
        raise RankError(
            f"ranks {rank_t} do not fit layer '{layer_name}' tensorized as {modes}: give one "
            f"rank 1 <= R_i <= I_i per mode (or ranks=None for R_i = I_i)"
        )
    return TeraScheme(modes, k, rank_t)


def tera_modes(
    in_features: int,
    out_features: int,
    in_mode: int | None = None,
    out_mode: int | None = None,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], int]:
    """TeRA's tensorization of a layer as ``(modes, k)`` (see :func:`tera_scheme`).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    in_mode, out_mode : int, optional
        Equal mode sizes; a mode size >= the dimension keeps it whole.
    in_modes, out_modes : sequence of int, optional
        Explicit modes whose product is the dimension.

    Returns
    -------
    tuple
        ``(modes, k)`` where ``k = len(input modes)``.

    Examples
    --------
    >>> from tera.theory import tera_modes
    >>> tera_modes(4096, 4096, in_mode=4096, out_mode=8)
    ((4096, 8, 8, 8, 8), 1)
    >>> tera_modes(576, 192, in_modes=(8, 8, 9), out_mode=192)
    ((8, 8, 9, 192), 3)
    """
    scheme = tera_scheme(
        in_features, out_features, in_mode, out_mode, in_modes=in_modes, out_modes=out_modes
    )
    return scheme.modes, scheme.k


def tera_parameter_count(
    in_features: int,
    out_features: int,
    in_mode: int | None = None,
    out_mode: int | None = None,
    *,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    ranks: Sequence[int] | None = None,
) -> int:
    """Trainable parameters of one TeRA layer: ``sum R_i`` (``R_i = I_i`` by default).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    in_mode, out_mode : int, optional
        Equal mode sizes (see :func:`tera_scheme`).
    in_modes, out_modes : sequence of int, optional
        Explicit modes instead.
    ranks : sequence of int, optional
        Tucker ranks ``R_i <= I_i``; defaults to the modes themselves.

    Returns
    -------
    int
        ``sum R_i``.

    Examples
    --------
    >>> from tera.theory import tera_parameter_count
    >>> tera_parameter_count(4096, 4096, in_mode=4096, out_mode=8)
    4128
    >>> tera_parameter_count(4096, 4096, in_mode=64, out_mode=64)
    256
    """
    scheme = tera_scheme(
        in_features,
        out_features,
        in_mode,
        out_mode,
        in_modes=in_modes,
        out_modes=out_modes,
        ranks=ranks,
    )
    return sum(scheme.ranks)


def lora_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """Trainable parameters of one LoRA layer: ``r * (in + out)`` (A is r x in, B out x r).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    r : int
        LoRA rank.

    Returns
    -------
    int
        The number of trainable values.

    Examples
    --------
    >>> from tera.theory import lora_parameter_count
    >>> lora_parameter_count(4096, 4096, r=32)
    262144
    """
    _positive_ints((in_features, out_features, r), "(in_features, out_features, r)")
    return r * (in_features + out_features)


def vera_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """Trainable parameters of one VeRA layer: ``out + r`` (vectors b and d).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    r : int
        VeRA rank (size of the shared random projections).

    Returns
    -------
    int
        The number of trainable values.

    Examples
    --------
    >>> from tera.theory import vera_parameter_count
    >>> vera_parameter_count(4096, 4096, r=256)
    4352
    """
    _positive_ints((in_features, out_features, r), "(in_features, out_features, r)")
    return out_features + r


def hira_parameter_count(in_features: int, out_features: int, r: int) -> int:
    """Trainable parameters of one HiRA layer: ``r * (in + out)`` (as LoRA, used in W0 ⊙ BA).

    Parameters
    ----------
    in_features, out_features : int
        The layer's input and output sizes.
    r : int
        HiRA rank.

    Returns
    -------
    int
        The number of trainable values.

    Examples
    --------
    >>> from tera.theory import hira_parameter_count
    >>> hira_parameter_count(4096, 4096, r=1)
    8192
    """
    return lora_parameter_count(in_features, out_features, r)


def params_percent(trainable: int, base_total: int) -> float:
    """The paper's "Params (%)": ``100 * trainable / (base_total + trainable)``.

    Parameters
    ----------
    trainable : int
        Trainable adapter parameters.
    base_total : int
        All parameters of the base model.

    Returns
    -------
    float
        The percentage.

    Examples
    --------
    >>> from tera.theory import params_percent
    >>> round(params_percent(264_192, 6_738_415_616), 4)   # TeRA-sized on Llama-2-7B
    0.0039
    """
    if trainable < 0 or base_total < 0 or trainable + base_total == 0:
        raise ShapeError(
            f"need trainable >= 0 and base_total >= 0, not both 0; got {trainable}, {base_total}"
        )
    return 100.0 * trainable / (base_total + trainable)


class TeraErrorBound(NamedTuple):
    """Theorem 3's bound, its two terms and the vectors ``d_i`` that achieve it.

    Attributes
    ----------
    bound : float
        Right-hand side of Eq. (9): ``subspace_error + in_subspace_bound``.
    subspace_error : float
        ``||W* - L L^+ W* M^+ M||_F^2``: what no choice of ``d_i`` can fit.
    in_subspace_bound : float
        ``g_max^2 (||Z||_F^2 - ||Fold(Z)||_2^2) ||L||_F^2 ||M||_F^2``, with the spectral norm
        estimated from below by HOPM (which only makes the bound larger, so still valid).
    g_max : float
        Largest absolute entry of the core.
    z_spectral_norm : float
        The HOPM estimate of ``||Fold(Z)||_2``.
    vectors : list of numpy.ndarray
        ``d_1 .. d_N`` from the rank-1 approximation of ``Fold(Z)`` (the scale is folded into
        ``d_1``); the TeRA update they give has error at most ``bound``.

    Examples
    --------
    >>> import numpy as np
    >>> from tera.theory import tera_error_bound
    >>> rng = np.random.default_rng(0)
    >>> G, A = rng.standard_normal((2, 2)), [np.eye(2), np.eye(2)]
    >>> b = tera_error_bound(rng.standard_normal((2, 2)), G, A, k=1)
    >>> bool(np.isclose(b.bound, b.subspace_error + b.in_subspace_bound))
    True
    """

    bound: float
    subspace_error: float
    in_subspace_bound: float
    g_max: float
    z_spectral_norm: float
    vectors: list[npt.NDArray[np.float64]]


def _as_float64(x: Any, name: str) -> npt.NDArray[np.float64]:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return np.asarray(x, dtype=np.float64)


def tera_error_bound(W_star: Any, core: Any, factors: Sequence[Any], k: int) -> TeraErrorBound:
    r"""Theorem 3: upper bound on :math:`\min_d \|\mathbf{W}^* - \mathbf{W}_{TeRA}\|_F^2`.

    With :math:`\mathbf{L}^\top = \bigotimes_{i \le k} \mathbf{A}^{(i)}`,
    :math:`\mathbf{M} = \bigotimes_{i > k} \mathbf{A}^{(i)}` and
    :math:`\mathbf{Z} = \mathbf{L}^\dagger \mathbf{W}^* \mathbf{M}^\dagger \oslash
    \mathbf{G}_{[N;k]}`,

    .. math:: \|\mathbf{W}^* - \mathbf{L}\mathbf{L}^\dagger\mathbf{W}^*\mathbf{M}^\dagger
              \mathbf{M}\|_F^2 + g_{\max}^2 (\|\mathbf{Z}\|_F^2 -
              \|\mathrm{Fold}_{[N;k]}(\mathbf{Z})\|_2^2)\, \|\mathbf{L}\|_F^2
              \|\mathbf{M}\|_F^2.

    Computed in float64 with dense Kronecker products, so meant for theory-sized layers.

    Parameters
    ----------
    W_star : array
        Target update of shape ``(prod(I[:k]), prod(I[k:]))``.
    core : array
        Frozen core ``G`` of shape ``(R_1, ..., R_N)`` with no zero entry.
    factors : sequence of array
        Frozen factors ``A_i`` of shape ``(R_i, I_i)``.
    k : int
        Number of modes that index the rows of ``W*``.

    Returns
    -------
    TeraErrorBound

    Examples
    --------
    >>> import numpy as np
    >>> from tera.theory import tera_error_bound
    >>> from tera.tn import tucker_to_matrix
    >>> rng = np.random.default_rng(0)
    >>> G = rng.standard_normal((3, 2, 2))
    >>> A = [rng.standard_normal((3, 3)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))]
    >>> W = rng.standard_normal((3, 4))
    >>> b = tera_error_bound(W, G, A, k=1)
    >>> W_tera = tucker_to_matrix(G, [d[:, None] * a for d, a in zip(b.vectors, A)], k=1)
    >>> bool(np.linalg.norm(W - W_tera) ** 2 <= b.bound)
    True
    """
    g = _as_float64(core, "core")
    a = [_as_float64(f, f"factors[{i}]") for i, f in enumerate(factors)]
    w = _as_float64(W_star, "W_star")
    if len(a) != g.ndim:
        raise ShapeError(f"an order-{g.ndim} core needs {g.ndim} factors, got {len(a)}")
    for i, f in enumerate(a):
        if f.ndim != 2 or f.shape[0] != g.shape[i]:
            raise ShapeError(
                f"factors[{i}] has shape {f.shape}; it must be R_{i + 1} x I_{i + 1} with "
                f"R_{i + 1} = {g.shape[i]}"
            )
    if not 1 <= k < g.ndim:
        raise ShapeError(f"k={k} must satisfy 1 <= k < N = {g.ndim}")
    shape = [f.shape[1] for f in a]
    expected = (math.prod(shape[:k]), math.prod(shape[k:]))
    if w.shape != expected:
        raise ShapeError(f"W_star has shape {w.shape}; with k={k} it must be {expected}")
    g_k = unfold(g, k)
    if np.any(g_k == 0):
        raise ShapeError("the core has zero entries; Theorem 3 divides by G and assumes none")
    L = kron(a[:k]).T
    M = kron(a[k:])
    L_pinv, M_pinv = np.linalg.pinv(L), np.linalg.pinv(M)
    projected = L_pinv @ w @ M_pinv
    subspace_error = float(np.linalg.norm(w - L @ projected @ M) ** 2)
    Z = projected / g_k
    approx = rank1_approx(Z.reshape(g.shape))
    residual = max(float(np.linalg.norm(Z) ** 2) - approx.scale**2, 0.0)
    g_max = float(np.abs(g).max())
    in_subspace = g_max**2 * residual * float(np.linalg.norm(L) ** 2 * np.linalg.norm(M) ** 2)
    vectors = [np.asarray(v, dtype=np.float64) for v in approx.vectors]
    vectors[0] = vectors[0] * approx.scale
    return TeraErrorBound(
        bound=subspace_error + in_subspace,
        subspace_error=subspace_error,
        in_subspace_bound=in_subspace,
        g_max=g_max,
        z_spectral_norm=approx.scale,
        vectors=vectors,
    )

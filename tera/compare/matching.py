"""Parameter-matched peers: ``vera(r=match)`` sizes VeRA's rank to TeRA's trainable count.

The paper compares TeRA with "parameter count-matched methods": its VeRA (r = 256 on
Llama-2-7B, J = 4096) trains about as many parameters as TeRA. A rank that matches on one
model does not on another (r = 256 on MiniLM, J = 384, trains 1.58x TeRA's parameters and
spans 2/3 of the full rank), so the harness can size a peer on the model being compared:
``r=match`` picks the rank whose adapter-parameter count is nearest to the default TeRA's
(``tera`` as :data:`~tera.compare.methods.METHODS` configures it) on the same targets. Ties
go to the smaller rank. VeRA trains ``out + r`` per layer, LoRA and HiRA ``r * (in + out)``;
the smallest rank is 1, so a LoRA may be unable to come near (the report flags it).

A comparison is *parameter-matched* when a method's adapter count is within
:data:`MATCH_TOLERANCE` of TeRA's (the ratio in [1 / 1.1, 1.1]); the report prints each
method's ratio and flags the ones outside.

Examples
--------
>>> from torch import nn
>>> from tera.compare.matching import match_ranks, parameter_ratio_note
>>> from tera.compare.methods import parse_methods
>>> model = nn.Sequential(nn.Linear(384, 384), nn.Linear(384, 384))
>>> vera, lora = match_ranks(parse_methods("vera(r=match), lora(r=match)"), model, ["0", "1"])
>>> vera.label, dict(vera.fields)["r"], dict(vera.matched)["params"]
('VeRA (r=22, matched)', 22, 812)
>>> lora.label  # r = 1 already trains 1.89x TeRA's count: the report flags it
'LoRA (r=1, nearest match 1.89x)'
>>> parameter_ratio_note(1.58)
'1.58x TeRA; not parameter-matched'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from torch import nn

from tera.compare.methods import METHODS, Method, MethodSpecError, method_config

__all__ = [
    "MATCH_TOLERANCE",
    "adapter_count",
    "is_matched",
    "match_ranks",
    "nearest_rank",
    "parameter_ratio_note",
    "target_out_sizes",
]

#: A method is parameter-matched to TeRA when its adapter count is within this fraction.
MATCH_TOLERANCE = 0.10
_MAX_RANK = 1 << 20


def is_matched(ratio: float) -> bool:
    """Whether a parameter ratio (method / TeRA) counts as matched (within 10%).

    Examples
    --------
    >>> is_matched(1.0), is_matched(1.05), is_matched(1.58), is_matched(0.5)
    (True, True, False, False)
    """
    return 1 / (1 + MATCH_TOLERANCE) <= ratio <= 1 + MATCH_TOLERANCE


def parameter_ratio_note(ratio: float, reference: str = "TeRA") -> str:
    """``"1.00x TeRA; matched"`` or ``"1.58x TeRA; not parameter-matched"``.

    Examples
    --------
    >>> parameter_ratio_note(1.0)
    '1.00x TeRA; matched'
    """
    word = "matched" if is_matched(ratio) else "not parameter-matched"
    return f"{ratio:.2f}x {reference}; {word}"


def target_out_sizes(model: nn.Module, targets: Sequence[str]) -> list[int]:
    """The distinct output sizes of the Linear layers ``targets`` names (sorted).

    Examples
    --------
    >>> target_out_sizes(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), ["0", "1"])
    [2, 8]
    """
    return sorted(
        {
            m.out_features
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
        }
    )


def adapter_count(method: Method, model: nn.Module, targets: Sequence[str]) -> int:
    """Adapter parameters ``method`` trains on ``model`` (counted, nothing is built).

    Examples
    --------
    >>> from tera.compare.methods import parse_method
    >>> adapter_count(parse_method("vera(r=4)"), nn.Sequential(nn.Linear(8, 8)), ["0"])
    12
    """
    from tera.adapters import parameter_report

    config = method_config(method, targets, target_out_sizes(model, targets))
    if config is None:
        return 0
    return parameter_report(model, config).adapter


def nearest_rank(count_at: Callable[[int], int], target: int) -> int:
    """The rank ``r >= 1`` whose count is nearest to ``target`` (ties: the smaller rank).

    ``count_at`` must be non-decreasing in ``r`` (every method's count is).

    Examples
    --------
    >>> nearest_rank(lambda r: 12 * (384 + r), 4872)  # VeRA on MiniLM's 12 q/v layers
    22
    >>> nearest_rank(lambda r: 768 * r, 100)  # below the smallest rank: r = 1
    1
    """
    if target <= count_at(1):
        return 1
    high = 2
    while count_at(high) < target:
        if high >= _MAX_RANK:
            return high
        high *= 2
    low = high // 2  # count_at(low) < target <= count_at(high)
    while high - low > 1:
        mid = (low + high) // 2
        if count_at(mid) < target:
            low = mid
        else:
            high = mid
    return low if target - count_at(low) <= count_at(high) - target else high


def _with_rank(method: Method, r: int) -> Method:
    return dataclasses.replace(
        method, fields=tuple((k, r if k == "r" else v) for k, v in method.fields)
    )


def match_ranks(
    methods: Sequence[Method],
    model: nn.Module,
    targets: Sequence[str],
) -> list[Method]:
    """``methods`` with every ``r=match`` resolved on ``model`` (the others unchanged).

    Parameters
    ----------
    methods : sequence of Method
        Parsed specs (:func:`~tera.compare.methods.parse_methods`).
    model : nn.Module
        The model being compared (only its shapes are read).
    targets : sequence of str
        The adapted modules.

    Returns
    -------
    list of Method
        A resolved method keeps its key (``"vera(r=match)"``); its label shows the rank
        (``"VeRA (r=22, matched)"``, or ``"LoRA (r=1, nearest match 1.89x)"`` outside
        :data:`MATCH_TOLERANCE`) and ``matched`` holds the reference's count, its own
        and their ratio.
    """
    needed = [m for m in methods if m.to_match]
    if not needed:
        return list(methods)
    reference = adapter_count(METHODS["tera"], model, targets)
    resolved: dict[str, Method] = {}
    for method in needed:
        if method.kind not in ("vera", "lora", "hira"):  # parse_method refuses it already
            raise MethodSpecError(f"{method.name}: r=match sizes vera, lora or hira only")

        def count(r: int, method: Method = method) -> int:
            return adapter_count(_with_rank(method, r), model, targets)

        r = nearest_rank(count, reference)
        params = count(r)
        ratio = params / reference
        head = method.label.split(" (")[0]
        others = [f"{k}={v}" for k, v in method.fields if k != "r"]
        word = "matched" if is_matched(ratio) else f"nearest match {ratio:.2f}x"
        label = f"{head} ({', '.join([f'r={r}', *others, word])})"
        resolved[method.name] = dataclasses.replace(
            _with_rank(method, r),
            label=label,
            description=(
                f"{method.description or method.kind}, r = {r}: the rank whose trainable "
                f"count is nearest TeRA's ({params:,d} against {reference:,d}, {ratio:.2f}x)"
            ),
            matched=(
                ("reference", "tera"),
                ("reference_params", reference),
                ("params", params),
                ("ratio", ratio),
                ("r", r),
            ),
        )
    return [resolved.get(m.name, m) for m in methods]

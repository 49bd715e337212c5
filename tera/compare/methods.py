"""The methods compared, written as specs: ``tera``, ``tera(zero_init=0)``, ``vera(r=1024)``.

A spec is a method's name, optionally followed by ``(field=value, ...)`` setting any field
of its adapter config (``TeRAConfig`` and the others), plus ``lr`` (one learning rate, or a
tuple: the grid searched on the validation split). Values are Python literals read with
``ast.literal_eval`` (never ``eval``): numbers, strings (quotes optional for one word:
``factors=unique``), tuples such as ``out_modes=(8, 8, 6)``, ``True``/``False``/``None``.
A list of specs is split at its top-level commas:
``"tera,tera(zero_init=0),tera(out_mode=4),vera(r=1024),lora(r=8)"``. The spec, with spaces
removed, is the method's key in ``results.json`` and its label in tables and plots.

The bases, configured as the paper recommends (Appendix F, Table 9), adapt the query and
value projections (or ``--targets``):

========== ================================================================================
``tera``   TeRA, input dimension whole, output split into modes of 8 where it can
           ((384 | 8, 8, 6) on MiniLM; (576 | 8, 8, 9) and (192 | 8, 8, 3) on SmolLM2)
``vera``   VeRA, r = 256
``hira``   HiRA, r = 32 (``hira1`` is ``hira(r=1)``)
``lora``   LoRA, r = 32, alpha = 2r
``head``   the task head only (the floor every adapter must beat); on a causal LM, which
           has no new head, the zero-shot baseline (:data:`ZERO_SHOT`): no training
========== ================================================================================

Named variants reproduce the paper's ablations: ``tera-iden`` (every frozen factor the
identity, only the core random: Figure 6), ``tera-unique`` (frozen core and factors drawn
per layer instead of shared: Appendix J, Table 8) and ``tera-paper-init`` (the raw Kaiming
draw instead of the normalized scale). Placement (Table 6) is ``--targets``.

Examples
--------
>>> from tera.compare.methods import parse_methods
>>> [(m.key, m.label) for m in parse_methods("tera, vera(r=1024), lora(r=8, lr=1e-3)")]
[('tera', 'TeRA'), ('vera(r=1024)', 'VeRA (r=1024)'), ('lora(r=8,lr=1e-3)', 'LoRA (r=8, lr=1e-3)')]
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tera.adapters import AdapterConfig, HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig
from tera.errors import TargetError, TeraError
from tera.tn import split_dim, suggest_modes

__all__ = [
    "MATCH",
    "METHODS",
    "ZERO_SHOT",
    "Method",
    "MethodSpecError",
    "for_model_kind",
    "method_config",
    "parse_method",
    "parse_methods",
    "split_specs",
]


class MethodSpecError(TeraError, ValueError):
    """A method spec names an unknown method or field, or gives a bad value."""


_CONFIGS: dict[str, type[AdapterConfig]] = {
    "tera": TeRAConfig,
    "vera": VeRAConfig,
    "hira": HiRAConfig,
    "lora": LoRAConfig,
}
#: ``r=match``: the rank is sized on the compared model to TeRA's trainable-parameter count
#: (:mod:`tera.compare.matching`).
MATCH = "match"
_MATCHABLE = ("vera", "lora", "hira")
#: Config fields the harness sets itself (from --targets, the task head and the run seed).
_RESERVED = {"target_modules": "--targets", "modules_to_save": "the task", "seed": "--seeds"}


@dataclass(frozen=True)
class Method:
    """A method of the comparison: an adapter kind, its config fields, its learning rates.

    Attributes
    ----------
    name : str
        The key: the spec as written, spaces removed (``"tera(zero_init=0)"``); unique
        within a comparison.
    label : str
        The name shown in tables and plots (``"TeRA (zero_init=0)"``).
    lr_grid : tuple of float
        Learning rates tried on the validation split (one: no search; empty: nothing
        trains).
    kind : str
        ``"tera"``, ``"vera"``, ``"hira"``, ``"lora"`` or ``"head"``.
    fields : tuple of (str, object)
        The adapter config fields the spec sets, over the base's defaults.
    trains : bool
        ``False`` for the zero-shot baseline: the model is evaluated as it is.
    description : str
        What the method is, for the report (the paper figure a variant reproduces).
    matched : tuple of (str, object)
        For an ``r=match`` spec once sized on a model (:func:`~tera.compare.matching.match_ranks`):
        ``reference``, ``reference_params``, ``params``, ``ratio`` and ``r``; else empty.

    Examples
    --------
    >>> from tera.compare.methods import METHODS
    >>> METHODS["tera"].label, METHODS["tera"].lr_grid
    ('TeRA', (0.03, 0.1, 0.3))
    """

    name: str
    label: str
    lr_grid: tuple[float, ...]
    kind: str = ""
    fields: tuple[tuple[str, Any], ...] = ()
    trains: bool = True
    description: str = ""
    matched: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self.name)

    @property
    def key(self) -> str:
        """The method's key in ``results.json`` (the same as ``name``)."""
        return self.name

    @property
    def to_match(self) -> bool:
        """Whether the spec's rank is ``r=match`` and not yet sized on a model."""
        return dict(self.fields).get("r") == MATCH


def _lr_grid(center: float) -> tuple[float, ...]:
    return (center / 3.0, center, center * 3.0)


# Learning-rate grids: three points a factor ~3 apart, centred where each method's
# validation accuracy peaked in the default comparison at this budget (MiniLM, MultiEmo, 100
# steps; the learning-rate trials in docs/results/compare-default/results.json, validation
# split only): TeRA and VeRA 0.1 (0.3 was worse), HiRA 0.03 (the edge of its earlier grid),
# LoRA 3e-3 (1e-2 was worse). A best rate on the grid's edge adds one more point beyond it
# (tera.compare.run), so a grid can be wrong by one step without deciding the result.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("head", "Head only", (1e-2, 3e-2, 1e-1), description="the task head only"),
        Method("lora", "LoRA (r=32)", (1e-3, 3e-3, 1e-2), description="LoRA, r = 32, alpha = 64"),
        # HiRA's dW is W0 ⊙ (B A): scaled by |W0| ~ 0.04 on MiniLM, it needs larger steps
        Method("hira", "HiRA (r=32)", (1e-2, 3e-2, 1e-1), description="HiRA, r = 32"),
        Method(
            "hira1", "HiRA (r=1)", (1e-2, 3e-2, 1e-1), "hira", (("r", 1),), description="HiRA, r=1"
        ),
        Method("vera", "VeRA (r=256)", (3e-2, 1e-1, 3e-1), description="VeRA, r = 256"),
        Method("tera", "TeRA", (3e-2, 1e-1, 3e-1), description="TeRA, (in | 8, 8, ...)"),
        Method(
            "tera-iden",
            "TeRA-iden",
            (3e-2, 1e-1, 3e-1),
            "tera",
            (("factors", "identity"),),
            description="TeRA with identity factors, only the core random (paper Figure 6)",
        ),
        Method(
            "tera-unique",
            "TeRA-unique",
            (3e-2, 1e-1, 3e-1),
            "tera",
            (("factors", "unique"),),
            description="TeRA with frozen factors drawn per layer (paper Table 8)",
        ),
        Method(
            "tera-paper-init",
            "TeRA-paper-init",
            (3e-2, 1e-1, 3e-1),
            "tera",
            (("init", "paper"),),
            description="TeRA with the raw Kaiming draw, no scale normalization",
        ),
    )
}
"""Every named method and variant, with its label and learning-rate grid."""

#: ``head`` on a causal LM: nothing to train (no new head), the pretrained model as it is.
ZERO_SHOT = Method("head", "Zero-shot", (), trains=False, description="the model as it is")

_SHOWN = {"vera": ("r",), "hira": ("r",), "lora": ("r",)}  # fields the label always shows


def split_specs(text: str) -> list[str]:
    """Split ``text`` at its top-level commas (not inside parentheses, brackets or quotes).

    Examples
    --------
    >>> split_specs("tera(out_modes=(8, 8, 6)), lora(r=8)")
    ['tera(out_modes=(8, 8, 6))', 'lora(r=8)']
    """
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise MethodSpecError(f"unbalanced ')' in method list {text!r}")
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if depth or quote:
        raise MethodSpecError(f"unclosed parenthesis or quote in method list {text!r}")
    parts.append("".join(current).strip())
    return parts


def _literal(text: str, where: str) -> Any:
    text = text.strip()
    if text.isidentifier() and text not in ("True", "False", "None"):
        return text  # one bare word: a string
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise MethodSpecError(
            f"{where}: {text!r} is not a literal; write a number, a quoted string, a tuple "
            "such as (8, 8, 6), True, False or None"
        ) from None


def _config_fields(kind: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_CONFIGS[kind]) if f.name not in _RESERVED]


def _check_lr(value: Any, spec: str) -> tuple[float, ...]:
    values = value if isinstance(value, tuple | list) else (value,)
    ok = values and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok:
        raise MethodSpecError(
            f"{spec}: lr must be a positive number or a tuple of them such as (1e-3, 3e-3), "
            f"got {value!r}"
        )
    return tuple(sorted(float(v) for v in values))


def _label(base: Method, fields: Mapping[str, Any], lr_text: str | None) -> str:
    head = base.label.split(" (")[0]
    if base.fields:
        shown: dict[str, Any] = dict(base.fields) if base.kind in _SHOWN else {}
    else:
        shown = {f: _BASE_DEFAULTS[base.kind][f] for f in _SHOWN.get(base.kind, ())}
    shown.update(fields)
    parts = [f"{k}={_format(v)}" for k, v in shown.items()]
    if lr_text is not None:
        parts.append(f"lr={lr_text}")
    return f"{head} ({', '.join(parts)})" if parts else head


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ")"
    return str(value)


_BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"r": 32, "alpha": 64.0},
    "hira": {"r": 32},
    "vera": {"r": 256},
}


def parse_method(spec: str) -> Method:
    """One method from its spec, e.g. ``"tera(zero_init=0, lr=0.03)"``.

    Parameters
    ----------
    spec : str
        A name of :data:`METHODS`, optionally with ``(field=value, ...)``.

    Returns
    -------
    Method
        With ``name`` the spec without spaces.

    Raises
    ------
    MethodSpecError
        For an unknown method or field (naming the valid ones) or a value the config
        refuses (naming the field).

    Examples
    --------
    >>> parse_method("tera(zero_init=0)").fields
    (('zero_init', 0),)
    >>> parse_method("vera(rank=4)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tera.compare.methods.MethodSpecError: vera(rank=4): unknown field 'rank' for vera; valid ...
    """
    text = spec.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if name not in METHODS:
        raise MethodSpecError(
            f"unknown method {name!r} in {text!r}; choose from {', '.join(METHODS)} (each may "
            "take fields, e.g. tera(zero_init=0))"
        )
    base = METHODS[name]
    if paren and not rest.rstrip().endswith(")"):
        raise MethodSpecError(f"{text!r}: a spec ends with ')', e.g. lora(r=8)")
    body = rest.rstrip()[:-1] if paren else ""
    fields: dict[str, Any] = {}
    lr_grid = base.lr_grid
    lr_text = None
    valid = [*_config_fields(base.kind), "lr"] if base.kind != "head" else ["lr"]
    for item in split_specs(body) if body.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise MethodSpecError(f"{text}: {item!r} is not field=value, e.g. r=8")
        if key in _RESERVED:
            raise MethodSpecError(f"{text}: {key} is set by the harness ({_RESERVED[key]})")
        if key not in valid:
            raise MethodSpecError(
                f"{text}: unknown field {key!r} for {base.kind}; valid fields: {', '.join(valid)}"
            )
        if key in fields or (key == "lr" and lr_text is not None):
            raise MethodSpecError(f"{text}: field {key!r} is given twice")
        parsed = _literal(value, f"{text}, field {key!r}")
        if parsed == MATCH and (key != "r" or base.kind not in _MATCHABLE):
            raise MethodSpecError(
                f"{text}: {key}=match: only the rank r of vera, lora or hira can be matched "
                "(to TeRA's trainable-parameter count), e.g. vera(r=match)"
            )
        if key == "lr":
            lr_grid, lr_text = _check_lr(parsed, text), value.strip()
            continue
        fields[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    if base.kind != "head":
        _validate(base, fields, text)
    key = "".join(text.split())
    label = _label(base, fields, lr_text) if fields or lr_text else base.label
    return dataclasses.replace(
        base, name=key, label=label, lr_grid=lr_grid, fields=(*base.fields, *fields.items())
    )


def _validate(base: Method, fields: Mapping[str, Any], spec: str) -> None:
    merged = {**_BASE_DEFAULTS.get(base.kind, {}), **dict(base.fields), **fields}
    if merged.get("r") == MATCH:  # sized later, on the model: check the rest with r = 1
        merged["r"] = 1
    try:
        _CONFIGS[base.kind](target_modules=("q_proj",), **merged)
    except (TeraError, TypeError, ValueError) as err:
        bad = [f for f in fields if f in str(err)]
        where = f"field {bad[0]!r}" if bad else "its fields"
        raise MethodSpecError(f"{spec}: bad value for {where}: {err}") from None


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """Methods from a comma-separated list of specs (or a sequence of specs).

    Examples
    --------
    >>> from tera.compare.methods import parse_methods
    >>> [m.name for m in parse_methods("tera, tera(zero_init=0), lora(r=4)")]
    ['tera', 'tera(zero_init=0)', 'lora(r=4)']
    """
    specs = split_specs(spec) if isinstance(spec, str) else [s.strip() for s in spec]
    if not specs or not all(specs):
        raise MethodSpecError(f"empty method in {spec!r}; choose from {', '.join(METHODS)}")
    methods = [parse_method(s) for s in specs]
    keys = [m.name for m in methods]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise MethodSpecError(f"method(s) {dupes} are listed twice")
    return methods


def for_model_kind(method: Method, kind: str) -> Method:
    """``method`` as it runs on a model of ``kind`` (``"classifier"`` or ``"causal_lm"``).

    A classifier gets a new task head, which ``head`` trains; a causal LM answers with its own
    vocabulary, so there ``head`` is :data:`ZERO_SHOT`. Every other method is unchanged.

    Examples
    --------
    >>> from tera.compare.methods import METHODS, for_model_kind
    >>> for_model_kind(METHODS["head"], "causal_lm").label
    'Zero-shot'
    >>> for_model_kind(METHODS["head"], "classifier").label
    'Head only'
    """
    if kind not in ("classifier", "causal_lm"):
        raise TargetError(f"unknown model kind {kind!r}; choose 'classifier' or 'causal_lm'")
    return ZERO_SHOT if method.kind == "head" and kind == "causal_lm" else method


def _out_modes(size: int) -> tuple[int, ...]:
    try:
        return split_dim(size, 8)
    except ValueError:
        return suggest_modes(size, 8) if size > 8 else (size,)


def method_config(
    method: Method,
    target_modules: Sequence[str],
    out_sizes: Sequence[int],
    head: Sequence[str] = (),
    seed: int = 0,
) -> AdapterConfig | None:
    """The adapter config of ``method`` (``None`` for ``head``: no adapter).

    Parameters
    ----------
    method : Method
        The method.
    target_modules : sequence of str
        The adapted modules of the model (the q and v projections by default).
    out_sizes : sequence of int
        The distinct output sizes of those layers (TeRA gets explicit modes for each,
        unless the spec sets ``out_mode`` or ``out_modes``).
    head : sequence of str
        Modules trained alongside (the new classification head).
    seed : int
        Seed of the frozen factors and trainable initialization.

    Examples
    --------
    >>> from tera.compare.methods import METHODS, method_config, parse_method
    >>> method_config(METHODS["tera"], ["query", "value"], [384]).out_modes
    {384: (8, 8, 6)}
    >>> method_config(parse_method("tera(out_mode=4)"), ["query"], [384]).out_modes is None
    True
    """
    if method.kind == "head":
        return None
    if method.to_match:
        raise MethodSpecError(
            f"{method.name}: r=match is sized on a model first "
            "(tera.compare.matching.match_ranks); tera compare does it"
        )
    common: dict[str, Any] = dict(
        target_modules=tuple(target_modules), modules_to_save=tuple(head), seed=seed
    )
    fields = {**_BASE_DEFAULTS.get(method.kind, {}), **dict(method.fields)}
    if method.kind == "tera":
        defaults: dict[str, Any] = {"in_mode": 1 << 16, "out_mode": 8}
        if "out_mode" not in fields and "out_modes" not in fields:
            defaults["out_modes"] = {size: _out_modes(size) for size in out_sizes}
        fields = {**defaults, **fields}
    return _CONFIGS[method.kind](**common, **fields)

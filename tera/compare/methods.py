"""The methods compared, configured as the paper recommends (Appendix F, Table 9).

Every method adapts the query and value projections only; TeRA keeps the input dimension
whole and splits the output into modes of 8 where it can (the paper's (4096 | 8, 8, 8, 8)
on Llama; (384 | 8, 8, 6) on MiniLM; (576 | 8, 8, 9) and (576 | 8, 8, 3) on SmolLM2's
q and v). ``head`` trains the task head only (the floor every adapter must beat); on a
causal LM there is no new head, so ``head`` becomes the zero-shot baseline (:data:`ZERO_SHOT`):
no learning-rate search, no training, 0 trainable parameters, just the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tera.adapters import AdapterConfig, HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig
from tera.errors import TargetError
from tera.tn import split_dim, suggest_modes

__all__ = ["METHODS", "ZERO_SHOT", "Method", "for_model_kind", "method_config", "parse_methods"]


@dataclass(frozen=True)
class Method:
    """A method of the comparison.

    Attributes
    ----------
    name : str
        The name used on the command line and in reports.
    label : str
        The name shown in tables and plots.
    lr_grid : tuple of float
        Learning rates tried on the validation split (empty when nothing trains).
    trains : bool
        ``False`` for the zero-shot baseline: the model is evaluated as it is.

    Examples
    --------
    >>> from tera.compare.methods import METHODS
    >>> METHODS["tera"].label, METHODS["tera"].lr_grid
    ('TeRA', (0.01, 0.03, 0.1))
    """

    name: str
    label: str
    lr_grid: tuple[float, ...]
    trains: bool = True


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # two points each, at the high end of what FINDINGS measured on MiniLM: the default
        # budget is ~150 steps, far shorter than the paper's thousands (1e-3 .. 2e-4)
        Method("head", "Head only", (1e-2, 3e-2)),
        Method("lora", "LoRA (r=32)", (1e-3, 3e-3)),
        # HiRA's dW is W0 ⊙ (B A): scaled by |W0| ~ 0.04 on MiniLM, it needs larger steps
        # (measured: 1e-3 and 3e-3 left r = 1 at the majority class after 150 steps)
        Method("hira", "HiRA (r=32)", (3e-3, 1e-2)),
        Method("hira1", "HiRA (r=1)", (1e-2, 3e-2)),
        # three points: with two, both picked the top one (3e-2) on the default preset
        Method("vera", "VeRA (r=256)", (1e-2, 3e-2, 1e-1)),
        Method("tera", "TeRA", (1e-2, 3e-2, 1e-1)),
    )
}
"""Every method by name, with its label and learning-rate grid."""

#: ``head`` on a causal LM: nothing to train (no new head), the pretrained model as it is.
ZERO_SHOT = Method("head", "Zero-shot", (), trains=False)


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
    return ZERO_SHOT if method.name == "head" and kind == "causal_lm" else method


def parse_methods(spec: str | Sequence[str]) -> list[Method]:
    """Methods from a comma-separated list such as ``"tera,vera,lora"``.

    Examples
    --------
    >>> from tera.compare.methods import parse_methods
    >>> [m.name for m in parse_methods("tera, lora")]
    ['tera', 'lora']
    """
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise TargetError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return [METHODS[n] for n in names]


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
        The q and v projection names of the model.
    out_sizes : sequence of int
        The distinct output sizes of those layers (TeRA gets explicit modes for each).
    head : sequence of str
        Modules trained alongside (the new classification head).
    seed : int
        Seed of the frozen factors and trainable initialization.

    Examples
    --------
    >>> from tera.compare.methods import METHODS, method_config
    >>> cfg = method_config(METHODS["tera"], ["query", "value"], [384])
    >>> cfg.out_modes
    {384: (8, 8, 6)}
    """
    common = dict(target_modules=tuple(target_modules), modules_to_save=tuple(head), seed=seed)
    if method.name == "head":
        return None
    if method.name == "lora":
        return LoRAConfig(r=32, alpha=64, **common)  # type: ignore[arg-type]  # alpha = 2r
    if method.name == "hira":
        return HiRAConfig(r=32, **common)  # type: ignore[arg-type]
    if method.name == "hira1":
        return HiRAConfig(r=1, **common)  # type: ignore[arg-type]
    if method.name == "vera":
        return VeRAConfig(r=256, **common)  # type: ignore[arg-type]
    out_modes = {size: _out_modes(size) for size in out_sizes}
    return TeRAConfig(in_mode=1 << 16, out_mode=8, out_modes=out_modes, **common)  # type: ignore[arg-type]

"""Bring your own model: a local Hugging Face model folder, loaded offline.

The folder holds ``config.json``, the weights (``*.safetensors`` or ``*.bin``) and the
tokenizer files, as ``save_pretrained`` writes them. Its kind comes from the config's
``architectures`` (``...ForCausalLM`` / ``...LMHeadModel``: a causal LM; ``...ForSequence
Classification``: a classifier; a bare encoder such as ``BertModel``: a classifier; a bare
decoder-only model such as ``LlamaModel``: a causal LM) or from ``kind=`` (``--kind``). A
classifier always gets a new task head drawn from the run seed, so every method starts from
the same head. The adapted modules are the query and value projections found by name, or
``targets=`` (``--targets``); when none match, the error lists the model's Linear layers.

Examples
--------
>>> from torch import nn
>>> from tera.compare.folder import find_targets
>>> model = nn.ModuleDict({"attn": nn.ModuleDict({"q_proj": nn.Linear(4, 4),
...                                               "k_proj": nn.Linear(4, 4)})})
>>> find_targets(model)
('q_proj',)
>>> find_targets(model, ["out"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
tera.errors.TargetError: --targets out matches no Linear layer ...; ... named: k_proj, q_proj
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tera.compare.models import LoadedModel, offline
from tera.errors import LoadError, TargetError

__all__ = ["QV_NAMES", "detect_kind", "find_targets", "is_model_folder", "load_model_folder"]

#: Leaf names of query and value projections across model families (Llama/Mistral/Qwen,
#: BERT/RoBERTa, T5, DistilBERT), the default targets.
QV_NAMES = ("q_proj", "v_proj", "query", "value", "q", "v", "q_lin", "v_lin")

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification",)


def is_model_folder(spec: str) -> bool:
    """True when ``spec`` names a folder holding a ``config.json``."""
    path = Path(spec).expanduser()
    return path.is_dir() and (path / "config.json").is_file()


def _linear_names(model: nn.Module) -> list[tuple[str, str]]:
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            out.append((name, name.rsplit(".", 1)[-1]))
    return out


def find_targets(model: nn.Module, targets: Sequence[str] | None = None) -> tuple[str, ...]:
    """The ``target_modules`` to adapt: ``targets`` checked, or the q/v projections by name.

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    targets : sequence of str, optional
        Leaf names or dotted suffixes (``"q_proj"``, ``"attention.self.query"``). Every one
        must match at least one Linear layer. ``None``: the leaves of :data:`QV_NAMES`
        present in the model.

    Returns
    -------
    tuple of str
        The names to pass as ``target_modules``, in the model's order.

    Raises
    ------
    TargetError
        When a target matches nothing (or, by default, no q/v projection is found); the
        message lists the model's Linear layer names.
    """
    linears = _linear_names(model)
    leaves = list(dict.fromkeys(leaf for _, leaf in linears))

    def listing() -> str:
        return ", ".join(sorted(leaves)) if leaves else "(none)"

    if targets is None:
        found = tuple(leaf for leaf in leaves if leaf in QV_NAMES)
        if not found:
            raise TargetError(
                "found no query/value projection (Linear layers named "
                f"{', '.join(QV_NAMES)}); pass --targets with some of the model's Linear "
                f"layers, which are named: {listing()}"
            )
        return found
    out = []
    for target in targets:
        if not any(full == target or full.endswith("." + target) for full, _ in linears):
            raise TargetError(
                f"--targets {target} matches no Linear layer of the model; its Linear layers "
                f"are named: {listing()}"
            )
        out.append(target)
    return tuple(out)


def _config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot read {path / 'config.json'}: {err}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise LoadError(f"{path / 'config.json'} is not a Hugging Face config (no model_type)")
    return data


def detect_kind(config: dict[str, Any]) -> str:
    """``"classifier"`` or ``"causal_lm"`` from a ``config.json`` (rules in the module doc).

    Examples
    --------
    >>> detect_kind({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    'causal_lm'
    >>> detect_kind({"model_type": "bert", "architectures": ["BertModel"]})
    'classifier'
    """
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "causal_lm"
    if any(a.endswith(_CLASSIFIER_SUFFIXES) for a in archs):
        return "classifier"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    decoder_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not config.get("is_encoder_decoder", False)
    )
    return "causal_lm" if decoder_only else "classifier"


def _reset_head(module: nn.Module, std: float, seed: int) -> None:
    """Draw every Linear of a new classification head from ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                if layer.bias is not None:
                    layer.bias.zero_()


def head_module_name(model: nn.Module) -> str:
    """The name of a classifier's head (``classifier``, ``score`` or ``head``)."""
    names = [n for n, _ in model.named_children()]
    for candidate in ("classifier", "score", "head"):
        if candidate in names:
            return candidate
    raise TargetError(f"cannot find the classification head among the model's modules {names}")


def load_model_folder(
    folder: str | Path,
    num_labels: int | None = None,
    seed: int = 0,
    kind: str | None = None,
    targets: Sequence[str] | None = None,
) -> LoadedModel:
    """Load a local Hugging Face model folder for the comparison, offline.

    Parameters
    ----------
    folder : str or Path
        The folder (``config.json``, weights, tokenizer).
    num_labels : int, optional
        Classes of the task; required for a classifier.
    seed : int
        Seed of a classifier's new head.
    kind : {"classifier", "causal_lm"}, optional
        Overrides the kind read from the config.
    targets : sequence of str, optional
        The modules to adapt (see :func:`find_targets`).

    Returns
    -------
    LoadedModel
        float32, on the CPU, in eval mode; ``name`` is the folder's name.

    Raises
    ------
    LoadError
        If the folder is not a model folder or its weights or tokenizer do not load.
    TargetError
        If ``targets`` match nothing.
    """
    path = Path(folder).expanduser()
    if not is_model_folder(str(path)):
        raise LoadError(f"{folder} is not a model folder (no config.json in it)")
    config = _config(path)
    kind = kind or detect_kind(config)
    if kind not in ("classifier", "causal_lm"):
        raise LoadError(f"--kind must be 'classifier' or 'causal_lm', got {kind!r}")
    import transformers as tf

    with offline():
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise LoadError(
                f"cannot load the tokenizer of {path} ({err}); the folder needs the tokenizer "
                "files that tokenizer.save_pretrained writes"
            ) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        try:
            if kind == "classifier":
                if num_labels is None or num_labels < 2:
                    raise LoadError(
                        f"a classifier needs a task with fixed labels (got {num_labels}); this "
                        "task's choices vary per example: use a causal LM or --kind causal_lm"
                    )
                model = tf.AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=num_labels,
                    dtype=torch.float32,
                    local_files_only=True,
                    ignore_mismatched_sizes=True,
                )
                model.config.pad_token_id = tokenizer.pad_token_id
                std = float(getattr(model.config, "initializer_range", 0.02))
                _reset_head(getattr(model, head_module_name(model)), std, seed)
            else:
                model = tf.AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch.float32, local_files_only=True
                )
        except (OSError, ValueError) as err:
            raise LoadError(f"cannot load the model in {path} as a {kind}: {err}") from None
    model.eval()
    chosen = find_targets(model, targets)
    return LoadedModel(model, tokenizer, kind, path.name, chosen)  # type: ignore[arg-type]

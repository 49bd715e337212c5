"""Hugging Face PEFT's adapter folders, read and written, for LoRA, VeRA and HiRA.

PEFT saves the same two files as tera, ``adapter_config.json`` and
``adapter_model.safetensors``, with other contents: PEFT's config fields (``peft_type``,
``r``, ``lora_alpha``, ...) and tensors named after PEFT's modules
(``base_model.model.<layer>.lora_A.weight``, ``...hira_A``, ``...vera_lambda_b``, and for
VeRA one shared pair ``base_model.vera_A`` / ``base_model.vera_B``).

:func:`read_peft` turns a PEFT folder into exactly what :func:`tera.adapters.io.read_meta`
and :func:`~tera.adapters.io.read_tensors` return for the same adapter saved by tera with
``include_factors=True``, so :meth:`~tera.adapters.AdaptedModel.from_pretrained` loads
either kind of folder. :func:`write_peft` is the inverse; ``save_pretrained(directory,
format="peft")`` calls it.

Only what computes the same model is converted. Reading refuses (with
:class:`~tera.errors.LoadError`, naming the field) every PEFT option that changes the
adapter's computation and that tera does not implement (DoRA, rsLoRA, per-layer ranks or
alphas, trained biases, initializations that modify the base weights, ...), a VeRA saved
without its projections, tensors tera cannot place and unknown ``peft_type`` values.
Writing refuses (with :class:`~tera.errors.FormatError`) TeRA, which PEFT does not implement,
and a VeRA whose per-shape projections are not slices of one pair, which PEFT's single pair
cannot express.

Examples
--------
>>> import tempfile
>>> from torch import nn
>>> from tera.adapters import AdaptedModel, LoRAConfig, adapt
>>> from tera.adapters.peft_format import is_peft_folder
>>> model = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=["0"]))
>>> with tempfile.TemporaryDirectory() as d:
...     model.save_pretrained(d, format="peft")
...     is_peft_folder(d), type(AdaptedModel.from_pretrained(model.unload(), d)).__name__
(True, 'AdaptedModel')
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tera.adapters import atomic, io
from tera.adapters.factors import SharedFactors
from tera.adapters.layer import linear_shape
from tera.adapters.registry import config_from_dict
from tera.adapters.vera import projection_keys
from tera.errors import FormatError, LoadError, TeraError

__all__ = ["PEFT_PREFIX", "is_peft_folder", "read_peft", "write_peft"]

PEFT_PREFIX = "base_model.model."
"""What PEFT puts before a layer's name in its tensor names (the adapter name stripped)."""

_KIND_OF = {"LORA": "lora", "VERA": "vera", "HIRA": "hira"}
_PEFT_TYPE_OF = {kind: peft_type for peft_type, kind in _KIND_OF.items()}
_SUFFIXES: dict[str, dict[str, str]] = {  # tera's parameter -> PEFT's suffix
    "lora": {"A": ".lora_A.weight", "B": ".lora_B.weight"},
    "vera": {"b": ".vera_lambda_b", "d": ".vera_lambda_d"},
    "hira": {"A": ".hira_A", "B": ".hira_B"},
}
_VERA_A, _VERA_B = "base_model.vera_A", "base_model.vera_B"
_DROPOUT = {"lora": "lora_dropout", "vera": "vera_dropout", "hira": "hira_dropout"}

# Fields that only select layers, describe the run or set initial values: what the saved
# tensors compute does not depend on them. (``fan_in_fan_out`` only says how a base weight
# is stored; PEFT sets it from the module type itself: False for nn.Linear, True for
# transformers' Conv1D, and tensors are r x in / out x r either way.)
_NEUTRAL = frozenset(
    {
        "peft_type",
        "peft_version",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "task_type",
        "inference_mode",
        "runtime_config",
        "target_modules",
        "exclude_modules",
        "layers_to_transform",
        "layers_pattern",
        "modules_to_save",
        "fan_in_fan_out",
        "r",
    }
)
_READ: dict[str, frozenset[str]] = {  # fields read (or neutral) per kind, beyond _NEUTRAL
    "lora": frozenset(
        {
            "lora_alpha",
            "lora_dropout",
            "init_lora_weights",
            "megatron_core",  # a module path, used only with megatron_config
            "qalora_group_size",  # used only with use_qalora
            "ensure_weight_tying",  # ties adapters of tied embeddings, which tera cannot load
        }
    ),
    "vera": frozenset(
        {"vera_dropout", "d_initial", "projection_prng_key", "save_projection", "init_weights"}
    ),
    "hira": frozenset({"hira_dropout", "init_weights"}),
}
_WHY: dict[str, str] = {  # what a refused option does
    "use_dora": "DoRA rescales the adapted weight by a trained magnitude vector",
    "use_rslora": "rsLoRA scales the update by lora_alpha / sqrt(r), not lora_alpha / r",
    "rank_pattern": "it gives layers ranks of their own; a tera config has one r",
    "alpha_pattern": "it gives layers alphas of their own; a tera config has one alpha",
    "bias": "it trains the base layers' biases",
    "lora_bias": "it adds a trained bias to lora_B",
    "trainable_token_indices": "it trains rows of the embedding",
    "layer_replication": "it duplicates decoder layers of the base model",
    "target_parameters": "it adapts nn.Parameters of non-Linear modules",
    "alora_invocation_tokens": "activated LoRA switches the adapter on per token",
    "use_qalora": "QALoRA pools the input before lora_A",
}
_SAFE_LORA_INITS = (True, False, "gaussian", "orthogonal", "eva")
"""``init_lora_weights`` values that leave the base weights as they are."""


def _is_off(value: object) -> bool:
    """Whether a PEFT option has its "not used" value (``None``, ``False``, empty, ``"none"``)."""
    return value is None or value is False or value in ("none", "") or value == {} or value == []


def is_peft_folder(directory: str | Path) -> bool:
    """Whether ``directory`` holds an adapter saved by PEFT (not by tera).

    True when its ``adapter_config.json`` is a JSON object with PEFT's ``peft_type`` and
    without tera's ``library`` key; False otherwise (also for a missing or unreadable file,
    which :func:`tera.adapters.io.read_meta` then reports).

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from tera.adapters.peft_format import is_peft_folder
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    ...     is_peft_folder(d), is_peft_folder(Path(d) / "missing")
    (True, False)
    """
    config = _read_json(Path(directory) / io.CONFIG_NAME)
    return config is not None and "peft_type" in config and "library" not in config


def _read_json(path: Path) -> dict[str, Any] | None:
    try:  # through a killed save's journal (tera.adapters.atomic)
        data = json.loads(atomic.resolve(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, LoadError):
        return None
    return data if isinstance(data, dict) else None


def _check_options(kind: str, config: Mapping[str, Any], path: Path) -> None:
    """Refuse every option of a PEFT config that would make tera compute another model."""
    peft_type = _PEFT_TYPE_OF[kind]
    if kind == "vera" and config.get("save_projection", True) is not True:
        raise LoadError(
            f"{path} is a PEFT VeRA saved with save_projection=False: its frozen projections "
            "vera_A/vera_B are not in the file but drawn by torch's generator from "
            f"projection_prng_key={config.get('projection_prng_key')!r}, which tera does not "
            "reproduce (nor does torch promise the same draw across versions). Save it from "
            "PEFT with the projections: build the PEFT model with the same VeraConfig but "
            "save_projection=True (the default; the same projection_prng_key draws the same "
            "projections), copy the vera_lambda_b/vera_lambda_d tensors in, and save_pretrained"
        )
    init = config.get("init_lora_weights", True)
    if kind == "lora" and init not in _SAFE_LORA_INITS:
        raise LoadError(
            f"{path} has init_lora_weights={init!r}; tera reads LoRA initialized with one of "
            f"{list(_SAFE_LORA_INITS)}. PiSSA, OLoRA, CorDA and LoftQ subtract the initial "
            "adapter from the base weights, so the adapter only fits that modified base "
            "model: convert it in PEFT to a plain LoRA first (save_pretrained(..., "
            "path_initial_model_for_weight_conversion=...)), or merge it there"
        )
    for field, value in config.items():
        if field in _NEUTRAL or field in _READ[kind] or _is_off(value):
            continue
        why = _WHY.get(field, "tera does not know this option")
        raise LoadError(
            f"{path} sets the PEFT {peft_type} option {field}={value!r} ({why}), which changes "
            f"what the adapter computes and which tera does not implement. tera reads PEFT "
            f"{peft_type} adapters that use only r, {', '.join(sorted(_READ[kind]))} and the "
            "layer selection; retrain without it, or merge the adapter in PEFT "
            "(merge_and_unload) and use the merged model"
        )


def _natural_key(name: str) -> list[Any]:
    """``layers.2`` before ``layers.10``: the model's order where no model is given."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _saved_module(rest: str, names: Sequence[str]) -> str | None:
    """The ``modules_to_save`` module a parameter name lies in (PEFT's suffix rule), if any."""
    parts = rest.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if any(prefix.endswith(m) for m in names):
            return prefix
    return None


def _covers(patterns: str | Sequence[str], names: Sequence[str]) -> bool:
    """Whether ``target_modules`` selects each of ``names`` (the rule tera and PEFT share)."""
    if isinstance(patterns, str):
        try:
            return all(re.fullmatch(patterns, n) is not None for n in names)
        except re.error:
            return False
    return all(any(n == p or n.endswith("." + p) for p in patterns) for n in names)


def read_peft(
    directory: str | Path, model: nn.Module | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A PEFT LoRA, VeRA or HiRA folder as tera's meta dict and tensors.

    Returns what :func:`tera.adapters.io.read_meta` and
    :func:`~tera.adapters.io.read_tensors` return for the same adapter saved by tera with
    ``include_factors=True``: tera's config (``lora_alpha`` becomes ``alpha``, the dropout
    ``dropout``; VeRA's ``projection_prng_key`` becomes the ``seed`` its factor keys name),
    the layers with their shapes, tensors named ``<layer>.adapter.<param>`` and, for VeRA,
    PEFT's one projection pair sliced into tera's per-shape factors (``tera_factors.<i>``
    in ``factor_keys`` order, fingerprinted).

    Parameters
    ----------
    directory : str or Path
        A folder written by PEFT's ``save_pretrained``.
    model : nn.Module, optional
        The base model the adapter is for (the one given to ``get_peft_model``). It gives
        the layers' order and shapes; a VeRA folder needs it, as PEFT stores no input size
        per layer. Without it the shapes come from the tensors.

    Raises
    ------
    LoadError
        Not a PEFT folder, an unsupported ``peft_type`` or option (named, with what tera
        reads), a VeRA without its projections, tensors that are missing, of the wrong
        shape, NaN/inf or of no layer tera can place, or layers this model lacks.

    Examples
    --------
    >>> import tempfile
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt
    >>> from tera.adapters.peft_format import read_peft
    >>> model = adapt(nn.Sequential(nn.Linear(8, 4)), LoRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d, format="peft")
    ...     meta, tensors = read_peft(d)
    >>> meta["kind"], meta["targets"], sorted(tensors)
    ('lora', {'0': {'in_features': 8, 'out_features': 4}}, ['0.adapter.A', '0.adapter.B'])
    """
    from tera import __version__

    directory = Path(directory)
    path = directory / io.CONFIG_NAME
    config = _read_json(path)
    if config is None or "peft_type" not in config or "library" in config:
        raise LoadError(
            f"{path} is not a PEFT adapter config (a JSON object with 'peft_type'); load a "
            "folder written by PEFT's save_pretrained, or a tera folder with from_pretrained"
        )
    peft_type = config["peft_type"]
    kind = _KIND_OF.get(peft_type) if isinstance(peft_type, str) else None
    if kind is None:
        raise LoadError(
            f"{path} has peft_type={peft_type!r}; tera reads PEFT's "
            f"{', '.join(sorted(_KIND_OF))} adapters"
        )
    _check_options(kind, config, path)
    weights = directory / io.WEIGHTS_NAME
    if not weights.is_file() and (directory / "adapter_model.bin").is_file():
        raise LoadError(
            f"{directory} holds PEFT's pickled adapter_model.bin; tera reads only safetensors "
            "(a pickle can run code when loaded): save it again from PEFT with "
            "save_pretrained(..., safe_serialization=True), the default"
        )
    tensors = io.read_tensors(directory)  # refuses NaN/inf, names the tensor
    to_save = config.get("modules_to_save") or []
    suffixes = _SUFFIXES[kind]
    layers: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, torch.Tensor] = {}
    saved_modules: list[str] = []
    projections: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if kind == "vera" and key in (_VERA_A, _VERA_B):
            projections[key] = tensor
            continue
        if not key.startswith(PEFT_PREFIX):
            raise LoadError(
                f"tensor '{key}' in {weights} does not start with '{PEFT_PREFIX}', the prefix "
                "PEFT gives the layers of a LoRA/VeRA/HiRA adapter, so tera cannot map it to a "
                "layer of the model; was the file written by another PEFT method or renamed?"
            )
        rest = key[len(PEFT_PREFIX) :]
        for param, suffix in suffixes.items():
            if rest.endswith(suffix):
                layers.setdefault(rest[: -len(suffix)], {})[param] = tensor
                break
        else:
            module = _saved_module(rest, to_save)
            if module is None:
                raise LoadError(
                    f"tensor '{key}' in {weights} is neither a {peft_type} tensor of a layer "
                    f"({', '.join(suffixes.values())}) nor a parameter of modules_to_save "
                    f"{list(to_save)}; tera cannot load it (embedding layers and trainable "
                    "tokens are not supported)"
                )
            if module not in saved_modules:
                saved_modules.append(module)
            saved[f"{io.SAVE_PREFIX}{rest}"] = tensor
    if not layers:
        raise LoadError(f"{weights} holds no {peft_type} layer tensors")
    r = config.get("r")
    shapes = _layer_shapes(kind, layers, r, model, weights)
    if model is not None:  # tera lists them in the model's order
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        saved_modules.sort(key=lambda n: order.get(n, len(order)))
    names = list(shapes)
    selection = config.get("target_modules")
    narrowed = any(config.get(f) for f in ("exclude_modules", "layers_to_transform"))
    target_modules: str | list[str] = (
        selection
        if isinstance(selection, str | list)
        and selection
        and selection != "all-linear"
        and not narrowed
        and _covers(selection, names)
        else names
    )
    fields: dict[str, Any] = {
        "kind": kind,
        "target_modules": target_modules,
        "modules_to_save": saved_modules,
        "dropout": config.get(_DROPOUT[kind], 0.0),
        "r": r,
    }
    if kind == "lora":
        fields["alpha"] = config.get("lora_alpha", 8)
    if kind == "vera":
        seed = config.get("projection_prng_key", 0)
        fields["seed"] = seed if isinstance(seed, int) and seed >= 0 else 0
        fields["d_initial"] = config.get("d_initial", 0.1)
    try:
        ours = config_from_dict(fields)
    except TeraError as err:
        raise LoadError(f"{path} does not give a valid tera {kind} config: {err}") from None
    out: dict[str, torch.Tensor] = {}
    for name in names:
        for param in suffixes:
            out[f"{name}.adapter.{param}"] = layers[name][param]
    shared = SharedFactors()
    if kind == "vera":
        _vera_factors(shared, projections, shapes, ours.to_dict(), weights)
        for i, (_, factor) in enumerate(shared.items()):
            out[f"{io.FACTOR_PREFIX}{i}"] = factor
    out.update(saved)
    meta: dict[str, Any] = {
        "format_version": io.FORMAT_VERSION,
        "library": "tera",
        "library_version": __version__,
        "kind": kind,
        "config": ours.to_dict(),
        "seed": ours.seed,
        "targets": {n: {"in_features": i, "out_features": o} for n, (i, o) in shapes.items()},
        "modules_to_save": saved_modules,
        "factor_keys": shared.keys(),
        "factor_fingerprint": shared.fingerprint(),
        "includes_factors": True,
    }
    return meta, out


def _layer_shapes(
    kind: str,
    layers: Mapping[str, Mapping[str, torch.Tensor]],
    r: object,
    model: nn.Module | None,
    weights: Path,
) -> dict[str, tuple[int, int]]:
    """``layer -> (in_features, out_features)``, in the model's order, every tensor checked."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise LoadError(f"the PEFT config of {weights.parent} has no valid rank r (got {r!r})")
    found: dict[str, tuple[int, int]] = {}
    for name, params in layers.items():
        missing = sorted(set(_SUFFIXES[kind]) - set(params))
        if missing:
            raise LoadError(
                f"{weights} lacks {[PEFT_PREFIX + name + _SUFFIXES[kind][p] for p in missing]} of "
                f"layer '{name}'; the file is incomplete: save it again from PEFT"
            )
        if kind == "vera":
            b, d = params["b"], params["d"]
            if b.dim() != 1 or tuple(d.shape) != (r,):
                raise LoadError(
                    f"layer '{name}' has vera_lambda_b {tuple(b.shape)} and vera_lambda_d "
                    f"{tuple(d.shape)} in {weights}; expected (out_features,) and ({r},)"
                )
            found[name] = (-1, b.shape[0])  # PEFT stores no input size: the model gives it
            continue
        a, b = params["A"], params["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise LoadError(
                f"layer '{name}' has A {tuple(a.shape)} and B {tuple(b.shape)} in {weights}; "
                f"expected ({r}, in_features) and (out_features, {r}) for rank r={r} (a "
                "convolution or an embedding layer, which tera does not adapt?)"
            )
        found[name] = (a.shape[1], b.shape[0])
    if model is None:
        if kind == "vera":
            raise LoadError(
                f"a PEFT VeRA folder ({weights.parent}) does not record the layers' input "
                "sizes; pass the base model: read_peft(directory, model)"
            )
        return {name: found[name] for name in sorted(found, key=_natural_key)}
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    shapes: dict[str, tuple[int, int]] = {}
    for name in sorted(found, key=lambda n: order.get(n, -1)):
        if name not in order:
            raise LoadError(
                f"the adapter in {weights.parent} adapts '{name}', which this model does not "
                "have; load it into the architecture it was trained on (the model given to "
                "PEFT's get_peft_model)"
            )
        in_f, out_f = linear_shape(model.get_submodule(name), name)
        if found[name][1] != out_f or found[name][0] not in (-1, in_f):
            saved_in = "?" if found[name][0] == -1 else found[name][0]
            raise LoadError(
                f"layer '{name}' is {in_f} -> {out_f} in this model but {saved_in} -> "
                f"{found[name][1]} in the saved adapter"
            )
        shapes[name] = (in_f, out_f)
    return shapes


def _vera_factors(
    shared: SharedFactors,
    projections: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    config: Mapping[str, Any],
    weights: Path,
) -> None:
    """PEFT's one ``vera_A`` / ``vera_B`` sliced into tera's per-shape factors, in build order."""
    if set(projections) != {_VERA_A, _VERA_B}:
        raise LoadError(
            f"{weights} lacks PEFT VeRA's projections {_VERA_A} and {_VERA_B}; the file is "
            "incomplete: save it again from PEFT with save_projection=True"
        )
    r = config["r"]
    big_a, big_b = projections[_VERA_A], projections[_VERA_B]
    max_in = max(i for i, _ in shapes.values())
    max_out = max(o for _, o in shapes.values())
    if (
        big_a.dim() != 2
        or big_b.dim() != 2
        or big_a.shape[0] != r
        or big_b.shape[1] != r
        or big_a.shape[1] < max_in
        or big_b.shape[0] < max_out
    ):
        raise LoadError(
            f"{weights} has vera_A {tuple(big_a.shape)} and vera_B {tuple(big_b.shape)}; "
            f"expected ({r}, >= {max_in}) and (>= {max_out}, {r}) for these layers"
        )
    for in_f, out_f in shapes.values():  # VeRA's build order: A, then B, layer by layer
        key_a, key_b = projection_keys(r, in_f, out_f, config["seed"])
        a = big_a[:, :in_f].contiguous().clone()
        b = big_b[:out_f, :].contiguous().clone()
        shared.get_or_create(key_a, _constant(a))
        shared.get_or_create(key_b, _constant(b))


def _constant(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor


def write_peft(
    directory: str | Path, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write tera's meta and tensors as a PEFT folder (atomically, like tera's own format).

    ``peft_folder``'s files, written with :func:`tera.adapters.io.write_folders`.

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from torch import nn
    >>> from tera.adapters import LoRAConfig, adapt
    >>> from tera.adapters import saving
    >>> from tera.adapters.peft_format import write_peft
    >>> model = adapt(nn.Sequential(nn.Linear(8, 4)), LoRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     meta = saving.adapter_meta(model, True, "default")
    ...     write_peft(d, meta, saving.adapter_state(model, True, "default"))
    ...     json.loads((Path(d) / "adapter_config.json").read_text())["peft_type"]
    'LORA'
    """
    io.write_folders(directory, {"": peft_folder(meta, tensors)})


def peft_folder(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> io.Folder:
    """The files of the PEFT folder for tera's meta and tensors (see :func:`write_peft`).

    The inverse of :func:`read_peft`: ``meta`` and ``tensors`` as
    ``saving.adapter_meta(model, True, name)`` and ``saving.adapter_state(model, True, name)`` give
    them (what ``save_pretrained(directory, format="peft")`` passes). The folder loads with
    ``peft.PeftModel.from_pretrained(base_model, directory)`` to the same outputs.

    Raises
    ------
    FormatError
        A TeRA adapter (PEFT has no TeRA), a kind PEFT lacks, a VeRA whose per-shape
        projections are not slices of one pair (PEFT's VeRA keeps a single pair), or
        tensors that have no PEFT name.

    Examples
    --------
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from torch import nn
    >>> from tera.adapters import HiRAConfig, adapt
    >>> model = adapt(nn.Sequential(nn.Linear(8, 4)), HiRAConfig(r=2, target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d, format="peft")  # calls peft_folder
    ...     json.loads((Path(d) / "adapter_config.json").read_text())["peft_type"]
    'HIRA'
    """
    kind = meta.get("kind")
    if kind == "tera":
        raise FormatError(
            "a TeRA adapter has no PEFT format: PEFT implements no TeRA, so no PEFT loader "
            "could compute it; save it in tera's format (save_pretrained(directory), "
            "format='tera') and load it with tera.adapters.from_pretrained"
        )
    if kind not in _PEFT_TYPE_OF:
        raise FormatError(
            f"adapter kind {kind!r} has no PEFT format; PEFT's are {sorted(_PEFT_TYPE_OF)}"
        )
    config = config_from_dict(meta["config"]).to_dict()
    targets: Mapping[str, Mapping[str, int]] = meta["targets"]
    names = list(targets)
    state: dict[str, torch.Tensor] = {}
    for name in names:
        for param, suffix in _SUFFIXES[kind].items():
            if f"{name}.adapter.{param}" not in tensors:
                raise FormatError(f"the tensors lack '{name}.adapter.{param}'; nothing was written")
            state[f"{PEFT_PREFIX}{name}{suffix}"] = tensors[f"{name}.adapter.{param}"]
    for key, tensor in tensors.items():
        if key.startswith(io.SAVE_PREFIX):
            state[f"{PEFT_PREFIX}{key[len(io.SAVE_PREFIX) :]}"] = tensor
    if kind == "vera":
        state[_VERA_A], state[_VERA_B] = _vera_projections(meta, tensors, config)
    used = {f"{n}.adapter.{p}" for n in names for p in _SUFFIXES[kind]}
    left = sorted(
        k for k in tensors if k not in used and not k.startswith((io.SAVE_PREFIX, io.FACTOR_PREFIX))
    )
    if left:
        raise FormatError(f"tensors {left[:5]} have no PEFT counterpart; nothing was written")
    selection = config["target_modules"]
    target_modules = selection if _covers(selection, names) else names
    to_save = list(meta.get("modules_to_save", [])) or None
    common: dict[str, Any] = {
        "peft_type": _PEFT_TYPE_OF[kind],
        "r": config["r"],
        "target_modules": target_modules,
        "modules_to_save": to_save,
        _DROPOUT[kind]: config["dropout"],
        "fan_in_fan_out": False,  # PEFT sets it per module type when it loads
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": None,
        "revision": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    if kind == "lora":
        peft: dict[str, Any] = {
            **common,
            "lora_alpha": config["alpha"],
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "lora_bias": False,
            "init_lora_weights": True,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
    elif kind == "vera":
        peft = {
            **common,
            "d_initial": config["d_initial"],
            "projection_prng_key": config["seed"],  # names tera's factor keys on reading
            "save_projection": True,
            "bias": "none",
            "init_weights": True,
        }
    else:
        peft = {**common, "init_weights": True, "rank_pattern": {}}
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return io.Folder(peft, state, {"format": "pt"}, stamp=False)


def _vera_projections(
    meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's ``vera_A`` / ``vera_B``: tera's largest factors, if the others are their slices.

    PEFT gives a layer ``vera_A[:, :in]`` and ``vera_B[:out, :]`` of one pair. tera draws a
    pair per size, so a smaller factor is a slice of the largest only when the adapter came
    from PEFT (or has one input and one output size); otherwise no rank-r PEFT VeRA computes
    the same model and this refuses.
    """
    keys: list[str] = list(meta.get("factor_keys", []))
    r, seed = config["r"], config["seed"]

    def factor(key: str) -> torch.Tensor:
        name = f"{io.FACTOR_PREFIX}{keys.index(key)}" if key in keys else ""
        if not meta.get("includes_factors") or name not in tensors:
            raise FormatError(
                f"VeRA's frozen factor {key!r} is not among the tensors; PEFT's VeRA needs "
                "them in the file: pass the state with include_factors=True"
            )
        return tensors[name]

    a_by_in: dict[int, torch.Tensor] = {}
    b_by_out: dict[int, torch.Tensor] = {}
    for shape in meta["targets"].values():
        in_f, out_f = shape["in_features"], shape["out_features"]
        key_a, key_b = projection_keys(r, in_f, out_f, seed)
        a_by_in[in_f], b_by_out[out_f] = factor(key_a), factor(key_b)
    big_a, big_b = a_by_in[max(a_by_in)], b_by_out[max(b_by_out)]
    nested = all(torch.equal(a, big_a[:, :i]) for i, a in a_by_in.items()) and all(
        torch.equal(b, big_b[:o, :]) for o, b in b_by_out.items()
    )
    if not nested:
        raise FormatError(
            "this VeRA adapter has no PEFT form: PEFT's VeRA keeps one projection pair, "
            f"vera_A ({r} x {max(a_by_in)}) and vera_B ({max(b_by_out)} x {r}), and gives each "
            "layer its top-left slice, but the adapted layers have input sizes "
            f"{sorted(a_by_in)} and output sizes {sorted(b_by_out)} and tera draws an "
            "independent pair per size, so the smaller ones are not slices of the largest "
            "and no rank-r PEFT VeRA computes this model. Save it in tera's format "
            "(format='tera'), or train a VeRA on layers of one shape (one in_features and "
            "one out_features). (A VeRA loaded from a PEFT folder keeps PEFT's nested "
            "projections and saves back to PEFT.)"
        )
    return big_a, big_b

"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The JSON records the adapter kind, the library and format versions, the config, the
adapted layer names and shapes, the seed and a SHA-256 fingerprint of the frozen shared
factors. The safetensors file holds the trainable tensors (and ``modules_to_save``), plus
the frozen factors only when asked for: a TeRA adapter for 64 layers of 4096 x 4096 is about
1 MB, not the 134 MB of its factors. Loading regenerates the factors from the seed and
refuses to continue if their fingerprint differs: never a silently different model.

Both files are written in full to temporary names and only then renamed into place (a
failed rename is rolled back), so a failure mid-save leaves a previously saved adapter
intact and no temporary files behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tera.adapters.config import config_from_dict
from tera.errors import FingerprintError, LoadError

if TYPE_CHECKING:
    from tera.adapters.model import AdaptedModel

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "load_adapter",
    "load_adapter_weights",
    "save_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
_FACTOR_PREFIX = "tera_factors."
_SAVE_PREFIX = "modules_to_save."


def _write_files(directory: Path, writers: dict[str, Callable[[str], object]]) -> None:
    """Write every file of ``writers`` (name -> function writing to a path) all or nothing.

    Each new file is written in full under a temporary name first; only then are they
    renamed into place, and if a rename fails the files already renamed are rolled back to
    their previous versions (kept as hard links, or copies, until the end). Whatever fails,
    the temporary files are removed and the directory holds either the old adapter or the
    new one. (Two renames are not one atomic step: a process *killed* between them, a
    window of microseconds, would leave the new weights with the old config.)
    """
    token = uuid.uuid4().hex
    temps: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        for name, write in writers.items():
            temps[name] = directory / f".{name}.{token}.tmp"
            write(str(temps[name]))
            os.chmod(temps[name], 0o666 & ~umask)  # some writers (safetensors) use 0600
        for name in writers:
            target = directory / name
            if target.exists():
                backups[name] = directory / f".{name}.{token}.bak"
                try:
                    os.link(target, backups[name])
                except OSError:  # no hard links on this filesystem
                    shutil.copy2(target, backups[name])
        replaced: list[str] = []
        try:
            for name, tmp in temps.items():
                os.replace(tmp, directory / name)
                replaced.append(name)
        except BaseException:
            for name in replaced:
                if name in backups:
                    os.replace(backups[name], directory / name)
                else:
                    (directory / name).unlink()
            raise
    finally:
        for leftover in (*temps.values(), *backups.values()):
            if leftover.exists():
                leftover.unlink()


def _state(model: AdaptedModel, include_factors: bool) -> dict[str, torch.Tensor]:
    tensors = {name: p.detach() for name, p in model.adapter_parameters()}
    for mname in model.modules_to_save:
        for pname, p in model.base_model.get_submodule(mname).named_parameters():
            tensors[f"{_SAVE_PREFIX}{mname}.{pname}"] = p.detach()
    if include_factors:
        for i, (_key, t) in enumerate(model.shared_factors.items()):
            tensors[f"{_FACTOR_PREFIX}{i}"] = t.detach()
    return {k: v.to("cpu").contiguous() for k, v in tensors.items()}


def save_adapter(model: AdaptedModel, directory: str | Path, include_factors: bool = False) -> None:
    """Save an adapted model's adapter (see the module docstring for the format).

    Parameters
    ----------
    model : AdaptedModel
        The model returned by :func:`tera.adapters.adapt`.
    directory : str or Path
        Created if missing; the two files inside are replaced atomically.
    include_factors : bool
        Also store the frozen shared factors (for portability to a future tera whose
        generator differs, or for auditing).

    Examples
    --------
    >>> import tempfile, os
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt
    >>> config = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"])
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), config)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     sorted(os.listdir(d))
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    from tera import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shared = model.shared_factors
    meta = {
        "format_version": FORMAT_VERSION,
        "library": "tera",
        "library_version": __version__,
        "kind": model.adapter_config.kind,
        "config": model.adapter_config.to_dict(),
        "seed": model.adapter_config.seed,
        "targets": {
            name: {"in_features": layer.in_features, "out_features": layer.out_features}
            for name, layer in model.adapter_layers.items()
        },
        "modules_to_save": list(model.modules_to_save),
        "factor_keys": shared.keys(),
        "factor_fingerprint": shared.fingerprint(),
        "includes_factors": include_factors,
    }
    tensors = _state(model, include_factors)
    _write_files(
        directory,
        {
            WEIGHTS_NAME: lambda tmp: save_file(
                tensors, tmp, metadata={"format": "pt", "library": "tera"}
            ),
            CONFIG_NAME: lambda tmp: Path(tmp).write_text(
                json.dumps(meta, indent=2, sort_keys=True) + "\n"
            ),
        },
    )


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise LoadError(
            f"no {CONFIG_NAME} in {directory}; is this a directory written by save_pretrained?"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoadError(f"{path} is not valid JSON ({err}); the file is corrupted") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise LoadError(f"{path} has no valid format_version; it was not written by tera")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"{path} has format_version {version} but this tera reads up to "
            f"{FORMAT_VERSION}; upgrade tera (it was written by tera {meta.get('library_version')})"
        )
    return meta  # type: ignore[no-any-return]


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise LoadError(f"no {WEIGHTS_NAME} in {directory}; the adapter's weights are missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise LoadError(
            f"{path} cannot be read ({err}); the file is corrupted or truncated: save the "
            "adapter again with save_pretrained()"
        ) from None


def load_adapter(
    model: nn.Module, directory: str | Path, is_trainable: bool = False
) -> AdaptedModel:
    """Attach a saved adapter to ``model`` (the inverse of :func:`save_adapter`).

    Parameters
    ----------
    model : nn.Module
        A base model with the same layer names and shapes as the one the adapter was
        trained on.
    directory : str or Path
        Directory written by ``save_pretrained``.
    is_trainable : bool
        Keep the adapter's parameters trainable (to continue training); by default they are
        frozen for inference, as in PEFT.

    Returns
    -------
    AdaptedModel

    Raises
    ------
    LoadError
        Missing or corrupted files, a newer format, other layer names or shapes.
    FingerprintError
        The regenerated frozen factors differ from those the adapter was trained with.

    Examples
    --------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt, from_pretrained
    >>> torch.manual_seed(0); base = nn.Sequential(nn.Linear(16, 16))  # doctest: +ELLIPSIS
    <...>
    >>> model = adapt(base, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    >>> with torch.no_grad(): _ = model.base_model[0].adapter.d[-1].fill_(0.5)
    >>> x = torch.randn(2, 16); y = model(x)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     loaded = from_pretrained(model.unload(), d)
    >>> torch.equal(loaded(x), y)
    True
    """
    from tera.adapters.model import adapt

    directory = Path(directory)
    meta = _read_meta(directory)
    config = config_from_dict(meta["config"])
    targets: dict[str, dict[str, int]] = meta["targets"]
    for name, shape in targets.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise LoadError(
                f"the adapter in {directory} adapts '{name}', which this model does not have; "
                "load it into the architecture it was trained on"
            ) from None
        from tera.adapters.layer import linear_shape

        in_f, out_f = linear_shape(module, name)
        if (in_f, out_f) != (shape["in_features"], shape["out_features"]):
            raise LoadError(
                f"layer '{name}' is {in_f} -> {out_f} in this model but "
                f"{shape['in_features']} -> {shape['out_features']} in the saved adapter"
            )
    tensors = _read_tensors(directory)
    adapted = adapt(model, config, targets=list(targets))
    try:
        _restore(adapted, meta, tensors, directory)
    except Exception:
        adapted.unload()
        raise
    for _, p in adapted.adapter_parameters():
        p.requires_grad_(is_trainable)
    return adapted


def load_adapter_weights(model: AdaptedModel, directory: str | Path) -> None:
    """Load a saved adapter's tensors into a model that already carries the same adapter.

    The inverse of :func:`~tera.adapters.save_adapter` for resuming training (what Hugging Face
    ``Trainer`` does with ``resume_from_checkpoint``): nothing is re-attached, the adapter's
    parameters (and ``modules_to_save``) are overwritten in place and keep their
    ``requires_grad``, so an optimizer holding them stays valid.

    Raises
    ------
    LoadError
        Missing or corrupted files, or an adapter saved with another configuration or on
        other layers.
    FingerprintError
        The frozen factors differ from those the adapter was trained with.

    Examples
    --------
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from tera.adapters import TeRAConfig, adapt
    >>> model = adapt(nn.Sequential(nn.Linear(16, 16)), TeRAConfig(in_mode=4, out_mode=4,
    ...                                                             target_modules=["0"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     with torch.no_grad(): _ = model.base_model[0].adapter.d[0].fill_(3.0)
    ...     model.load_adapter_weights(d)
    >>> model.base_model[0].adapter.d[0].tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    config = config_from_dict(meta["config"])
    if config != model.adapter_config:
        raise LoadError(
            f"the adapter in {directory} was saved with {config!r}, but this model carries "
            f"{model.adapter_config!r}; load it with from_pretrained() into a fresh base model"
        )
    saved, here = list(meta["targets"]), list(model.adapter_layers)
    if sorted(saved) != sorted(here):
        raise LoadError(
            f"the adapter in {directory} adapts {saved[:4]}... but this model adapts "
            f"{here[:4]}...; load it with from_pretrained() into a fresh base model"
        )
    _restore(model, meta, _read_tensors(directory), directory)


def _restore(
    adapted: AdaptedModel, meta: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path
) -> None:
    shared = adapted.shared_factors
    if meta.get("includes_factors"):
        for i, key in enumerate(meta["factor_keys"]):
            name = f"{_FACTOR_PREFIX}{i}"
            if name not in tensors or key not in shared.keys():  # noqa: SIM118
                raise LoadError(
                    f"{directory / WEIGHTS_NAME} lacks the factor '{key}' it should include"
                )
            shared.set(key, tensors.pop(name))
    if sorted(shared.keys()) != sorted(meta["factor_keys"]):
        raise FingerprintError(
            f"this tera builds factors {shared.keys()} for the adapter but it was saved with "
            f"{meta['factor_keys']}; the factor scheme changed between versions"
        )
    found = shared.fingerprint()
    if found != meta["factor_fingerprint"]:
        where = (
            "the factors stored in the file"
            if meta.get("includes_factors")
            else (f"the factors regenerated from seed {meta['seed']}")
        )
        raise FingerprintError(
            f"{where} do not match the fingerprint saved with the adapter "
            f"({found[:12]}... vs {meta['factor_fingerprint'][:12]}...): loading would give a "
            "different model. Re-save the adapter with include_factors=True where it was trained."
        )
    expected = {name: p for name, p in adapted.adapter_parameters()}
    for mname in meta.get("modules_to_save", []):
        for pname, p in adapted.base_model.get_submodule(mname).named_parameters():
            expected[f"{_SAVE_PREFIX}{mname}.{pname}"] = p
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LoadError(
            f"{directory / WEIGHTS_NAME} does not fit the adapter: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, p in expected.items():
            value = tensors[name]
            if tuple(value.shape) != tuple(p.shape):
                raise LoadError(
                    f"tensor '{name}' has shape {tuple(value.shape)} in the file but "
                    f"{tuple(p.shape)} here"
                )
            p.copy_(value.to(p.device, p.dtype))
    adapted.modules_to_save = list(meta.get("modules_to_save", []))

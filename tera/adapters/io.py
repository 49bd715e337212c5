"""The adapter file format: ``adapter_config.json`` + ``adapter_model.safetensors``.

This module only reads and writes the two files; what goes into them is decided by
:class:`~tera.adapters.AdaptedModel` (``save_pretrained``, ``from_pretrained``,
``load_adapter_weights``). The JSON records the adapter kind, the library and format
versions, the config, the adapted layer names and shapes, the seed and a SHA-256
fingerprint of the frozen shared factors. The safetensors file holds the trainable tensors
(and ``modules_to_save``), plus the frozen factors only when asked for: a TeRA adapter for
64 layers of 4096 x 4096 is about 1 MB, not the 134 MB of its factors.

Both files are written in full to temporary names and only then renamed into place (a
failed rename is rolled back), so a failure mid-save leaves a previously saved adapter
intact and no temporary files behind. A save *killed* midway (no ``finally`` runs) leaves
its hidden ``.<name>.<hex>.tmp``/``.bak`` files; the next save into that directory removes
them (only files named so). Two processes saving into one directory at the same time are
not supported (only the main process of a distributed run saves).

Tensors are checked when read: a file holding NaN or inf (a corrupted download, a diverged
run) is refused with an error naming the tensor.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tera.errors import LoadError

__all__ = [
    "CONFIG_NAME",
    "FACTOR_PREFIX",
    "FORMAT_VERSION",
    "SAVE_PREFIX",
    "WEIGHTS_NAME",
    "read_meta",
    "read_tensors",
    "sweep_leftovers",
    "write_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
FACTOR_PREFIX = "tera_factors."
"""Names of the frozen factors in the weights file (when saved with ``include_factors``)."""
SAVE_PREFIX = "modules_to_save."
"""Prefix of the ``modules_to_save`` tensors in the weights file."""
_LEFTOVER = re.compile(
    r"\.("
    + "|".join(re.escape(n) for n in (CONFIG_NAME, WEIGHTS_NAME))
    + r")\.[0-9a-f]{32}\.(tmp|bak)"
)


def sweep_leftovers(directory: str | Path) -> list[str]:
    """Remove what killed saves left in ``directory``: ``.<file>.<hex>.tmp`` / ``.bak`` only.

    Returns the names removed. Any other file, hidden or not, is left alone.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tera.adapters.io import sweep_leftovers
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = (Path(d) / f".adapter_config.json.{'0' * 32}.tmp").write_text("{")
    ...     _ = (Path(d) / ".mine.tmp").write_text("kept")
    ...     sweep_leftovers(d), sorted(p.name for p in Path(d).iterdir())
    (['.adapter_config.json.00000000000000000000000000000000.tmp'], ['.mine.tmp'])
    """
    removed = []
    for entry in sorted(Path(directory).iterdir()):
        if _LEFTOVER.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:  # pragma: no cover - removed meanwhile
                continue
            removed.append(entry.name)
    return removed


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


def write_adapter(
    directory: str | Path, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write the two files of an adapter into ``directory`` (created if missing), atomically.

    ``meta`` becomes ``adapter_config.json`` (``format_version`` is set here), ``tensors``
    (CPU, contiguous) ``adapter_model.safetensors``. Leftovers of killed saves are swept
    first (:func:`sweep_leftovers`).

    Examples
    --------
    >>> import tempfile, os, torch
    >>> from tera.adapters.io import read_tensors, write_adapter
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_adapter(d, {"kind": "lora"}, {"x": torch.ones(2)})
    ...     sorted(os.listdir(d)), read_tensors(d)["x"].tolist()
    (['adapter_config.json', 'adapter_model.safetensors'], [1.0, 1.0])
    """
    full = {"format_version": FORMAT_VERSION, **meta}
    write_config_and_weights(directory, full, tensors, {"format": "pt", "library": "tera"})


def write_config_and_weights(
    directory: str | Path,
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
) -> None:
    """Write ``config`` as ``adapter_config.json`` and ``tensors`` as the weights, atomically.

    The two files of :func:`write_adapter` as they are given (no ``format_version`` added),
    ``metadata`` going into the safetensors header; :mod:`tera.adapters.peft_format` writes
    PEFT's folders with it. ``directory`` is created if missing and swept of leftovers first.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(directory)
    full = dict(config)
    state = dict(tensors)
    header = dict(metadata)
    _write_files(
        directory,
        {
            WEIGHTS_NAME: lambda tmp: save_file(state, tmp, metadata=header),
            CONFIG_NAME: lambda tmp: Path(tmp).write_text(
                json.dumps(full, indent=2, sort_keys=True) + "\n"
            ),
        },
    )


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``directory``, its format version checked.

    Raises
    ------
    LoadError
        Missing or invalid JSON, or a format newer than this tera reads.
    """
    directory = Path(directory)
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


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors`` in ``directory``, all of them finite.

    Raises
    ------
    LoadError
        Missing, truncated or corrupted file, or a tensor holding NaN or inf (named).

    Examples
    --------
    >>> import tempfile, torch
    >>> from tera.adapters.io import read_tensors, write_adapter
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_adapter(d, {}, {"layer.adapter.d.0": torch.tensor([1.0, float("nan")])})
    ...     read_tensors(d)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tera.errors.LoadError: tensor 'layer.adapter.d.0' in ... holds 1 NaN/inf value(s) ...
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise LoadError(f"no {WEIGHTS_NAME} in {directory}; the adapter's weights are missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise LoadError(
            f"{path} cannot be read ({err}); the file is corrupted or truncated: save the "
            "adapter again with save_pretrained()"
        ) from None
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise LoadError(
                    f"tensor '{name}' in {path} holds {bad} NaN/inf value(s) of {t.numel()}; "
                    "the file is corrupted (or was saved from a diverged run): download or "
                    "save it again"
                )
    return tensors

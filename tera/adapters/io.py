"""The adapter file format: ``adapter_config.json`` + ``adapter_model.safetensors``.

This module only reads and writes the two files; what goes into them is decided by
:class:`~tera.adapters.AdaptedModel` (``save_pretrained``, ``from_pretrained``,
``load_adapter_weights``). The JSON records the adapter kind, the library and format
versions, the config, the adapted layer names and shapes, the seed and a SHA-256
fingerprint of the frozen shared factors. The safetensors file holds the trainable tensors
(and ``modules_to_save``), plus the frozen factors only when asked for: a TeRA adapter for
64 layers of 4096 x 4096 is about 1 MB, not the 134 MB of its factors.

**Saves are atomic.** One save writes one or several adapter folders (``"default"`` into
the folder itself, every other adapter into ``<folder>/<name>``, as PEFT) as one
transaction of :mod:`tera.adapters.atomic`: a kill at any moment leaves the previous
version of every file of every folder, or the new version of all of them, never a mix;
the next save removes what a killed one left. A save that cannot be written (a read-only
folder, a path that is a file, a full disk) raises :class:`~tera.errors.SaveError` naming
the path and the fix, and changes nothing. Both files of a save carry one random
``save_id`` (in the JSON and in the safetensors header); a folder whose two files come
from different saves (copied by hand, or read while another process saves) is refused.

**Loads are checked.** The JSON must be an object with every field a loader uses, of the
right type; every tensor must be floating point (float16, bfloat16, float32 or float64),
finite, and no larger in magnitude than :data:`MAX_ABS`, each refused with a
:class:`~tera.errors.LoadError` naming the file, the field or tensor, and the fix.

:data:`MAX_ABS` is ``2**63`` (about 9.2e18). No trained adapter comes near it (an
update that large is a corrupted file or a diverged run), and a layer holding such a
weight cannot give finite outputs in float32 or bfloat16 (the dtypes tera computes in):
an activation of order one that passes through it is squared by the next normalization
(LayerNorm/RMSNorm's variance) or attention score, and squares beyond ``sqrt(3.4e38)``
(about 1.8e19, float32's and bfloat16's largest value) overflow to inf. A value is also
refused where it is not finite in the dtype of the parameter it is loaded into
(:func:`cast_to`: float16 ends at 65504).

Examples
--------
>>> import tempfile, torch
>>> from tera.adapters.io import read_adapter, write_adapter
>>> with tempfile.TemporaryDirectory() as d:
...     write_adapter(d, {"kind": "lora"}, {"x": torch.ones(2)})
...     meta, tensors = read_adapter(d, check=False)
>>> meta["kind"], tensors["x"].tolist()
('lora', [1.0, 1.0])
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tera.adapters import atomic
from tera.errors import LoadError, SaveError, TeraError

__all__ = [
    "CONFIG_NAME",
    "FACTOR_PREFIX",
    "FLOAT_DTYPES",
    "FORMAT_VERSION",
    "MAX_ABS",
    "SAVE_PREFIX",
    "WEIGHTS_NAME",
    "Folder",
    "adapter_folder",
    "cast_to",
    "names_the_folder",
    "read_adapter",
    "read_meta",
    "read_tensors",
    "sweep_leftovers",
    "tensor_digest",
    "tera_folder",
    "write_adapter",
    "write_folders",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
FACTOR_PREFIX = "tera_factors."
"""Names of the frozen factors in the weights file (when saved with ``include_factors``)."""
SAVE_PREFIX = "modules_to_save."
"""Prefix of the ``modules_to_save`` tensors in the weights file."""
MAX_ABS = 2.0**63
"""The largest magnitude a loaded value may have (see the module's docstring for why)."""
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a loaded tensor may have."""
DIGEST = "weights_sha256"
"""The JSON key of the SHA-256 of the tensors (:func:`tensor_digest`) saved with it."""
SAVE_ID = "save_id"
"""The JSON key, and (prefixed ``tera_``) the safetensors metadata key, of a save's id."""
_HEADER_ID = f"tera_{SAVE_ID}"
_LEFTOVER = re.compile(
    r"\.("
    + "|".join(re.escape(n) for n in (CONFIG_NAME, WEIGHTS_NAME))
    + r")\.[0-9a-f]{32}\.(tmp|bak)"
)


# -- writing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Folder:
    """The two files of one adapter folder: the JSON, the tensors and the safetensors header.

    ``stamp`` puts the save's id into the JSON too (tera's format; PEFT's JSON stays PEFT's).
    """

    config: Mapping[str, Any]
    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str] = field(default_factory=dict)
    stamp: bool = True


def tera_folder(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Folder:
    """The folder tera writes for ``meta`` and ``tensors`` (``format_version``, header added).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.io import tera_folder
    >>> tera_folder({"kind": "lora"}, {"x": torch.ones(1)}).config["format_version"]
    1
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return Folder(
        {"format_version": FORMAT_VERSION, **meta, DIGEST: tensor_digest(tensors)},
        tensors,
        {"format": "pt", "library": "tera"},
    )


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order.

    Saved in tera's JSON and checked on load: a weights file changed after the save (a
    value, a dtype, a bit flipped on disk) is refused instead of loaded.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.io import tensor_digest
    >>> tensor_digest({"x": torch.ones(2)}) == tensor_digest({"x": torch.ones(2)})
    True
    >>> tensor_digest({"x": torch.ones(2)}) == tensor_digest({"x": torch.ones(2).double()})
    False
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def adapter_folder(adapter_name: str) -> str:
    """The sub-folder an adapter is saved into: ``""`` for ``"default"``, else its name (PEFT's).

    Raises
    ------
    SaveError
        A name that is no single folder name (holds a path separator).

    Examples
    --------
    >>> from tera.adapters.io import adapter_folder
    >>> adapter_folder("default"), adapter_folder("b")
    ('', 'b')
    """
    if adapter_name == "default":
        return ""
    if not adapter_name or any(c in adapter_name for c in "/\\") or adapter_name in (".", ".."):
        raise SaveError(
            f"adapter {adapter_name!r} is saved into a sub-folder of its name, which must be "
            "a single folder name: rename the adapter (no '/' or '\\')"
        )
    return adapter_name


def _write_weights(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> atomic.Writer:
    def write(path: str) -> None:
        try:
            save_file(tensors, path, metadata=metadata)
        except SafetensorError as err:  # its I/O errors (a full disk) are file-system faults
            raise OSError(f"writing {WEIGHTS_NAME} failed: {err}") from None

    return write


def _write_json(config: dict[str, Any]) -> atomic.Writer:
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return lambda path: Path(path).write_text(text)


def write_folders(root: str | Path, folders: Mapping[str, Folder]) -> None:
    """Write several adapter folders below ``root`` as one atomic save.

    ``folders`` maps a sub-folder (``""`` for ``root`` itself, see :func:`adapter_folder`)
    to its files. All are written, or none (:func:`tera.adapters.atomic.write_files`);
    other files in ``root`` (a ``Trainer`` checkpoint's) are never touched.

    Raises
    ------
    SaveError
        The file system refused, or a path on the way is a file: nothing was changed.

    Examples
    --------
    >>> import tempfile, os, torch
    >>> from tera.adapters.io import tera_folder, write_folders
    >>> folder = tera_folder({"kind": "lora"}, {"x": torch.ones(1)})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_folders(d, {"": folder, "b": folder})
    ...     sorted(os.listdir(d)), len(os.listdir(os.path.join(d, "b")))
    (['adapter_config.json', 'adapter_model.safetensors', 'b'], 2)
    """
    save_id = uuid.uuid4().hex
    files: dict[str, atomic.Writer] = {}
    for sub, folder in folders.items():
        prefix = f"{sub}/" if sub else ""
        config = dict(folder.config)
        if folder.stamp:
            config[SAVE_ID] = save_id
        metadata = {**folder.metadata, _HEADER_ID: save_id}
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in folder.tensors.items()}
        files[prefix + WEIGHTS_NAME] = _write_weights(tensors, metadata)
        files[prefix + CONFIG_NAME] = _write_json(config)
    root = Path(root)
    if root.is_dir():
        sweep_leftovers(root, old_only=True)
    atomic.write_files(root, files)


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
    write_folders(directory, {"": tera_folder(meta, tensors)})


def sweep_leftovers(directory: str | Path, old_only: bool = False) -> list[str]:
    """Finish or remove what killed saves left in ``directory``; returns the names removed.

    A committed save (a journal) is finished (:func:`tera.adapters.atomic.recover`); its
    staging folders without a journal, temporary journals and the ``.<file>.<hex>.tmp`` /
    ``.bak`` files of older tera versions are removed. Any other file, hidden or not, is left
    alone. ``old_only`` removes only the older versions' files.

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
    removed = [] if old_only else atomic.recover(directory)
    for entry in sorted(Path(directory).iterdir()):
        if _LEFTOVER.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


# -- reading: the JSON ----------------------------------------------------------------------------
def _bad(path: Path, what: str) -> LoadError:
    return LoadError(
        f"{path} {what}; the file is corrupted or was not written by tera: save the adapter "
        "again with save_pretrained()"
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _check_meta(meta: object, path: Path) -> dict[str, Any]:
    """``meta`` with every field a loader reads checked for presence and type."""
    if not isinstance(meta, dict):
        raise _bad(path, f"holds a JSON {_json_type(meta)}, not an object")
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise LoadError(f"{path} has no valid format_version; it was not written by tera")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"{path} has format_version {version} but this tera reads up to "
            f"{FORMAT_VERSION}; upgrade tera (it was written by tera {meta.get('library_version')})"
        )
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise _bad(path, "has no 'config' object with a 'kind'")
    targets = meta.get("targets")
    if not isinstance(targets, dict) or not targets:
        raise _bad(path, "has no 'targets' (an object: layer name -> in/out features)")
    for name, shape in targets.items():
        sizes = (
            [shape.get(k) for k in ("in_features", "out_features")]
            if isinstance(shape, dict)
            else [None]
        )
        if not name or not all(_is_int(s) and s >= 1 for s in sizes):
            raise _bad(path, f"has target {name!r} without positive in/out_features")
    if not _str_list(meta.get("factor_keys")):
        raise _bad(path, "has no 'factor_keys' (a list of names)")
    fingerprint = meta.get("factor_fingerprint")
    if not isinstance(fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise _bad(path, "has no 'factor_fingerprint' (64 hex digits)")
    if not isinstance(meta.get("includes_factors", False), bool):
        raise _bad(path, "has an 'includes_factors' that is not true/false")
    if not _str_list(meta.get("modules_to_save", [])):
        raise _bad(path, "has a 'modules_to_save' that is not a list of names")
    casts = meta.get("factor_casts", {})
    if not isinstance(casts, dict) or not all(
        _str_list(v) and all(d in _DTYPE_NAMES for d in v) for v in casts.values()
    ):
        raise _bad(path, "has a 'factor_casts' that is not an object of dtype-name lists")
    if not isinstance(meta.get(SAVE_ID, ""), str):
        raise _bad(path, f"has a '{SAVE_ID}' that is not a string")
    digest = meta.get(DIGEST, "0" * 64)
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _bad(path, f"has a '{DIGEST}' that is not 64 hex digits")
    return meta


_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in FLOAT_DTYPES}


def _load_json(path: Path, shown: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _bad(shown, "is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LoadError(f"{shown} is not valid JSON ({err}); the file is corrupted") from None
    except RecursionError:
        raise _bad(shown, "nests JSON too deeply") from None


def _read_config_file(directory: Path) -> tuple[dict[str, Any], Path]:
    shown = directory / CONFIG_NAME
    path = atomic.resolve(shown)
    if not path.is_file():
        raise LoadError(
            f"no {CONFIG_NAME} in {directory}; is this a directory written by save_pretrained?"
        )
    return _check_meta(_load_json(path, shown), shown), path


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of ``directory``, every field a loader reads checked.

    Raises
    ------
    LoadError
        Missing or invalid JSON, a field missing or of the wrong type, or a format newer than
        this tera reads.
    """
    meta, _ = _read_config_file(Path(directory))
    meta.pop(SAVE_ID, None)
    meta.pop(DIGEST, None)
    return meta


# -- reading: the tensors -------------------------------------------------------------------------
def _check_tensor(name: str, t: torch.Tensor, path: Path) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise LoadError(
            f"tensor '{name}' in {path} is {t.dtype}; adapter weights are float16, bfloat16, "
            "float32 or float64 (loading would convert it silently): the file was not written "
            "by tera or is corrupted, save the adapter again"
        )
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise LoadError(
            f"tensor '{name}' in {path} holds {bad} NaN/inf value(s) of {t.numel()}; "
            "the file is corrupted (or was saved from a diverged run): download or "
            "save it again"
        )
    largest = float(t.abs().max()) if t.numel() else 0.0
    if largest > MAX_ABS:
        raise LoadError(
            f"tensor '{name}' in {path} holds a value of magnitude {largest:.3g}, beyond "
            f"{MAX_ABS:.3g} (2**63), which no layer can hold and still give finite outputs "
            "in float32/bfloat16; the file is corrupted (or was saved from a diverged run): "
            "download or save it again"
        )


def _load_tensors(path: Path, shown: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as err:  # safetensors raises its own errors, and Rust panics
        raise LoadError(
            f"{shown} cannot be read ({type(err).__name__}: {err}); the file is corrupted or "
            "truncated: save the adapter again with save_pretrained()"
        ) from None
    if not isinstance(header, dict):  # pragma: no cover - safetensors returns a dict or None
        header = {}
    return tensors, header


def _read_weights_file(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    shown = directory / WEIGHTS_NAME
    path = atomic.resolve(shown)
    if not path.is_file():
        raise LoadError(f"no {WEIGHTS_NAME} in {directory}; the adapter's weights are missing")
    tensors, header = _load_tensors(path, shown)
    for name, t in tensors.items():
        _check_tensor(name, t, shown)
    return tensors, header, path


def read_tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors`` in ``directory``, every one checked.

    Raises
    ------
    LoadError
        Missing, truncated or corrupted file, or a tensor (named) that is not floating point,
        holds NaN or inf, or a value beyond :data:`MAX_ABS`.

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
    for _ in range(_ATTEMPTS):
        try:
            return _read_weights_file(Path(directory))[0]
        except FileNotFoundError:  # a staged file moved into place meanwhile: read again
            continue
    raise _concurrent(Path(directory))  # pragma: no cover - a save finishing each attempt


_ATTEMPTS = 3


def _concurrent(directory: Path) -> LoadError:
    return LoadError(
        f"the files in {directory} changed while they were read ({_ATTEMPTS} times); another "
        "process is saving into it: load it when that save is done"
    )


def read_adapter(
    directory: str | Path, check: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The meta and tensors of a tera adapter folder, both from one save.

    As :func:`read_meta` and :func:`read_tensors` (every check of both), and the two files
    must carry the same ``save_id`` (files of older tera versions carry none). ``check=False``
    skips the checks of the JSON's fields (for folders of other tools written with
    :func:`write_adapter`).

    Raises
    ------
    LoadError
        Anything :func:`read_meta` or :func:`read_tensors` refuses, or the JSON and the
        weights of two different saves.

    Examples
    --------
    >>> import tempfile, torch
    >>> from tera.adapters.io import read_adapter, write_adapter
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_adapter(d, {"kind": "lora"}, {"x": torch.ones(2)})
    ...     sorted(read_adapter(d, check=False)[1])
    ['x']
    """
    directory = Path(directory)
    mixed = False
    for _ in range(_ATTEMPTS):
        try:
            if check:
                meta, _ = _read_config_file(directory)
            else:
                shown = directory / CONFIG_NAME
                meta = _load_json(atomic.resolve(shown), shown)  # type: ignore[assignment]
                if not isinstance(meta, dict):
                    raise _bad(shown, f"holds a JSON {_json_type(meta)}, not an object")
            tensors, header, _ = _read_weights_file(directory)
        except FileNotFoundError:  # a staged file moved into place meanwhile: read again
            continue
        saved, weights = meta.pop(SAVE_ID, None), header.get(_HEADER_ID)
        if saved is not None and weights is not None and saved != weights:
            mixed = True  # maybe a save finishing right now: read again
            continue
        digest = meta.pop(DIGEST, None)
        if digest is not None and digest != tensor_digest(tensors):
            raise LoadError(
                f"the tensors in {directory / WEIGHTS_NAME} are not those saved with "
                f"{directory / CONFIG_NAME} (their SHA-256 differs from the one recorded): "
                "the file was changed or corrupted after the save; download or save the "
                "adapter again"
            )
        return meta, tensors
    if mixed:
        raise LoadError(
            f"{directory / CONFIG_NAME} and {directory / WEIGHTS_NAME} come from two different "
            "saves (copied together by hand, or another process is saving into the folder): "
            "loading them would mix two adapters; save the adapter again"
        )
    raise _concurrent(directory)  # pragma: no cover - a save finishing each attempt


F = TypeVar("F", bound=Callable[..., Any])


def names_the_folder(method: F) -> F:
    """Decorate a loader whose ``directory`` argument every error it raises should name.

    A tera error raised while loading that does not name the folder (a config field the
    config class refuses, a layer of another shape, ...) is raised again, as a
    :class:`~tera.errors.LoadError` (or the ``LoadError`` subclass it was), with the folder
    in front. Other exceptions pass unchanged.

    Examples
    --------
    >>> from tera.adapters.io import names_the_folder
    >>> from tera.errors import ConfigError
    >>> @names_the_folder
    ... def load(directory):
    ...     raise ConfigError("r must be >= 1, got 0")
    >>> load("/my/adapter")
    Traceback (most recent call last):
    ...
    tera.errors.LoadError: cannot load the adapter in /my/adapter: r must be >= 1, got 0
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except TeraError as err:
            directory = signature.bind_partial(*args, **kwargs).arguments.get("directory")
            if directory is None or str(directory) in str(err):
                raise
            kind = type(err) if isinstance(err, LoadError) else LoadError
            raise kind(f"cannot load the adapter in {directory}: {err}") from None

    return wrapper  # type: ignore[return-value]


def cast_to(name: str, value: torch.Tensor, like: torch.Tensor, path: str | Path) -> torch.Tensor:
    """``value`` in ``like``'s dtype and device, refused if a value is not finite there.

    float16 ends at 65504: a value read from a float32 file may be finite and within
    :data:`MAX_ABS` and still overflow in a float16 model.

    Raises
    ------
    LoadError
        Naming the tensor, the largest value and the dtype.

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.io import cast_to
    >>> half = torch.zeros(1, dtype=torch.float16)
    >>> cast_to("d", torch.tensor([1e5]), half, "x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tera.errors.LoadError: tensor 'd' in x holds a value of magnitude 1e+05, which float16 ...
    """
    out = value.to(like.device, like.dtype)
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        largest = float(value.abs().max())
        limit = torch.finfo(like.dtype).max
        raise LoadError(
            f"tensor '{name}' in {path} holds a value of magnitude {largest:.3g}, which "
            f"{str(like.dtype).removeprefix('torch.')} cannot hold (it ends at {limit:.3g}); "
            "load the adapter into a model of a wider dtype (float32 or bfloat16)"
        )
    return out

"""Several files of a folder replaced as one step, safe against a kill at any moment.

The files keep their names and places (PEFT and the Hugging Face ``Trainer`` read them
where they are, and a checkpoint folder holds other files, which are never touched), so
no single rename can swap them all. Instead a save is a small journaled transaction:

1. **Stage.** Every new file is written in full into a hidden folder of the root,
   ``.tera-staging-<hex>/`` (under the same relative path), and flushed to disk.
2. **Commit.** A journal listing the moves (staged file -> final name) is written to a
   temporary name, flushed, and renamed to ``.tera-journal.json``. That rename is atomic
   and is the commit point: before it every file is in its old version, after it in its
   new one.
3. **Move.** Each staged file is renamed over its final name (sub-folders are created
   here, so nothing visible changes before the commit).
4. **Done.** The journal is deleted, then the (empty) staging folder.

A process killed at any moment leaves either no journal (the old version of every file,
plus staging litter) or a journal whose staged files are complete (the new version).
Readers read through a journal (:func:`resolve`: a final name whose staged file still
exists is read from the staging folder) and never write, so a folder on read-only media,
or loaded by every rank of a distributed job at once, reads the same; the next save into
the folder first finishes the moves of a journal it finds (roll forward), then removes
the litter (staging folders without a journal, temporary journals). Saves into one folder
are serialized by an advisory lock (``flock`` on the folder, where the platform has it).

This module knows nothing of adapters: :mod:`tera.adapters.io` decides what the files are.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> from tera.adapters.atomic import write_files
>>> with tempfile.TemporaryDirectory() as d:
...     write_files(d, {"a.txt": lambda p: Path(p).write_text("1"),
...                     "sub/b.txt": lambda p: Path(p).write_text("2")})
...     sorted(str(p.relative_to(d)) for p in Path(d).rglob("*"))
['a.txt', 'sub', 'sub/b.txt']
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Any

from tera.errors import LoadError, SaveError, TeraError

__all__ = ["JOURNAL", "Writer", "recover", "resolve", "write_files"]

JOURNAL = ".tera-journal.json"
"""The journal's name in the root folder of a save (present only between commit and done)."""
_STAGING = re.compile(r"\.tera-staging-[0-9a-f]{32}")
_JOURNAL_TMP = re.compile(r"\.tera-journal\.[0-9a-f]{32}\.tmp")

Writer = Callable[[str], object]
"""Writes one file, in full, to the path it is given."""


# -- errors -------------------------------------------------------------------------------------
def _fix(err: OSError) -> str:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to, or make this one writable"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space, or save to another disk"
    if err.errno == errno.ENAMETOOLONG:
        return "choose a shorter path"
    return "check that the path is a folder you can write to"


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return str(err) or type(err).__name__


def _save_error(root: Path, err: OSError, committed: bool) -> SaveError:
    if committed:
        return SaveError(
            f"the new files are committed in {root} but moving them into place failed "
            f"({_reason(err)}); {root} loads as the new version, and the next save into it "
            f"finishes the move ({_fix(err)})"
        )
    return SaveError(
        f"cannot save into {root} ({_reason(err)}): {_fix(err)}. Every file there is unchanged."
    )


# -- paths ----------------------------------------------------------------------------------------
def _relative(name: str) -> str:
    """``name`` as a safe path below the root (no '..', not absolute, no hidden journal names)."""
    path = PurePosixPath(name)
    bad = (
        not name
        or "\\" in name
        or path.is_absolute()
        or any(part in ("", ".", "..") or part.startswith(".tera-") for part in path.parts)
    )
    if bad:
        raise SaveError(f"{name!r} is not a file name below the save folder")
    return path.as_posix()


def _check_destinations(root: Path, names: list[str]) -> None:
    """Refuse, before anything is written, a destination that is a folder or lies below a file."""
    for name in names:
        path = root
        parts = PurePosixPath(name).parts
        for i, part in enumerate(parts):
            path = path / part
            last = i == len(parts) - 1
            if last and path.is_dir():
                raise SaveError(
                    f"cannot save {path}: it is a folder; remove or rename it (nothing was written)"
                )
            if not last and path.exists() and not path.is_dir():
                raise SaveError(
                    f"cannot save into {path}: it is a file, not a folder; remove or rename "
                    "it, or save elsewhere (nothing was written)"
                )


# -- durability -----------------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames); not every platform can (then a no-op)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``root`` (released when the descriptor closes)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: saves into one folder must not overlap
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        with suppress(OSError):  # filesystems without locks (some network mounts)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the journal ----------------------------------------------------------------------------------
def _read_journal(directory: Path, error: type[TeraError]) -> dict[str, Any] | None:
    path = directory / JOURNAL
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise error(f"cannot read {path} ({_reason(err)}): {_fix(err)}") from None
    try:
        journal = json.loads(text)
        staging = journal["staging"]
        moves = [(str(src), str(dst)) for src, dst in journal["moves"]]
        valid = (
            isinstance(staging, str)
            and _STAGING.fullmatch(staging) is not None
            and all(_relative(src) == src and _relative(dst) == dst for src, dst in moves)
        )
    except (ValueError, TypeError, KeyError, SaveError):
        valid = False
    if not valid:
        raise error(
            f"{path} is not a journal of a tera save (corrupted?); which version of the "
            f"files in {directory} is current cannot be told: delete it to keep the files "
            "as they are, then save the adapter again"
        )
    return {"staging": staging, "moves": moves}


def _roll_forward(root: Path, journal: dict[str, Any]) -> None:
    """Finish a committed save: move every staged file still there, then clean up."""
    staging = root / journal["staging"]
    touched = {root}
    for src, dst in journal["moves"]:
        staged, final = staging / src, root / dst
        if not os.path.lexists(staged):
            continue  # moved already (by the save itself, or a roll forward before)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, final)
        except FileNotFoundError:  # pragma: no cover - moved meanwhile by another process
            continue
        touched.add(final.parent)
    for folder in touched:
        _fsync_dir(folder)
    (root / JOURNAL).unlink(missing_ok=True)
    _fsync_dir(root)
    shutil.rmtree(staging, ignore_errors=True)


def recover(root: str | Path, error: type[TeraError] = SaveError) -> list[str]:
    """Finish a committed save in ``root`` (roll forward) and remove the litter of killed ones.

    Litter is a staging folder without a journal and a temporary journal; nothing else is
    touched. Returns the names removed (a rolled-forward journal is not litter).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tera.adapters.atomic import recover
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (Path(d) / f".tera-staging-{'0' * 32}").mkdir()   # a save killed while staging
    ...     recover(d), sorted(p.name for p in Path(d).iterdir())
    (['.tera-staging-00000000000000000000000000000000'], [])
    """
    root = Path(root)
    journal = _read_journal(root, error)
    if journal is not None:
        _roll_forward(root, journal)
    removed = []
    for entry in sorted(root.iterdir()):
        if _STAGING.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        elif _JOURNAL_TMP.fullmatch(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def resolve(path: str | Path) -> Path:
    """Where to read the current version of ``path``: its staged copy while a journal lists it.

    A journal in the file's folder or the one above (a save of several adapters writes
    ``root/<name>/...``) is looked up; without one, or once the file is moved, ``path``.

    Raises
    ------
    LoadError
        A journal that cannot be read or is not one of tera's.

    Examples
    --------
    >>> from tera.adapters.atomic import resolve
    >>> resolve("/no/such/folder/adapter_config.json").name
    'adapter_config.json'
    """
    path = Path(os.path.abspath(path))
    for level in (path.parent, path.parent.parent):
        journal = _read_journal(level, LoadError)
        if journal is None:
            continue
        name = path.relative_to(level).as_posix()
        staging: str = journal["staging"]
        for src, dst in journal["moves"]:
            staged = level / staging / str(src)
            if dst == name and os.path.lexists(staged):
                return staged
    return path


def _recover_around(root: Path, names: list[str]) -> None:
    """Roll forward every journal that could still move files over those this save writes."""
    parent = root.parent
    above = _read_journal(parent, SaveError) if parent != root else None
    if above is not None and any(
        PurePosixPath(dst).parts[0] == root.name for _, dst in above["moves"]
    ):
        _roll_forward(parent, above)  # a save of several adapters wrote into this folder
    recover(root)
    for sub in sorted({PurePosixPath(n).parts[0] for n in names if "/" in n}):
        if (root / sub).is_dir():
            recover(root / sub)  # a save made directly into that sub-folder


def write_files(root: str | Path, files: Mapping[str, Writer]) -> None:
    """Replace (or create) the files ``files`` names below ``root``, all as one step.

    Parameters
    ----------
    root : str or Path
        The folder (created if missing). Other files in it are never touched.
    files : mapping of str to callable
        Path below ``root`` (``"a.json"``, ``"sub/a.json"``) -> a function writing that
        file, in full, to the path it is given.

    Raises
    ------
    SaveError
        ``root`` or a sub-folder on the way is a file, a destination is a folder, or the
        file system refused (read-only, full): nothing was changed. Past the commit point
        (moving files into place failed) the new version is kept and the message says so.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from tera.adapters.atomic import write_files
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_files(d, {"x.txt": lambda p: Path(p).write_text("new")})
    ...     (Path(d) / "x.txt").read_text()
    'new'
    """
    root = Path(root)
    names = [_relative(name) for name in files]
    writers = dict(zip(names, files.values(), strict=True))
    try:
        if root.exists() and not root.is_dir():
            raise SaveError(
                f"cannot save into {root}: it is a file, not a folder; choose a folder "
                "(nothing was written)"
            )
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if isinstance(err, TeraError):
            raise
        raise _save_error(root, err, committed=False) from None
    with _locked(root):
        try:
            _recover_around(root, names)
        except OSError as err:
            raise _save_error(root, err, committed=False) from None
        _check_destinations(root, names)
        token = uuid.uuid4().hex
        staging = root / f".tera-staging-{token}"
        journal_tmp = root / f".tera-journal.{token}.tmp"
        journal = {"staging": staging.name, "moves": [[name, name] for name in names]}
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            staging.mkdir()
            folders = {staging}
            for name, write in writers.items():
                staged = staging / name
                staged.parent.mkdir(parents=True, exist_ok=True)
                folders.add(staged.parent)
                write(str(staged))
                os.chmod(staged, 0o666 & ~umask)  # some writers (safetensors) use 0600
                _fsync_file(staged)
            for folder in folders:
                _fsync_dir(folder)
            journal_tmp.write_text(json.dumps(journal))
            _fsync_file(journal_tmp)
            os.replace(journal_tmp, root / JOURNAL)  # the commit point
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            journal_tmp.unlink(missing_ok=True)
            if isinstance(err, OSError) and not isinstance(err, TeraError):
                raise _save_error(root, err, committed=False) from None
            raise
        _fsync_dir(root)
        try:
            _roll_forward(root, journal)
        except OSError as err:
            if isinstance(err, TeraError):
                raise
            raise _save_error(root, err, committed=True) from None

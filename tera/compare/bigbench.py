"""BIG-bench tasks read offline from the ``bigbench==1.0.0`` source distribution on PyPI.

The sdist (358 MB) is downloaded once with ``pip download``; it is never installed. A task's
``task.json`` is streamed out of the tarball once, parsed (:mod:`tera.compare.taskjson`) and
kept as a small JSON file in the cache, so later loads take well under a second and never
touch the tarball. Tasks are named as their folders under ``bigbench/benchmark_tasks``:
``"strategyqa"``, or ``"multiemo/all_sentence_en"`` for a subtask.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tarfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tera.compare.cache import cache_dir, pip_download
from tera.compare.examples import Example, Task
from tera.compare.taskjson import parse_task_json
from tera.errors import LoadError

__all__ = ["BIGBENCH_REQUIREMENT", "TASKS_DIR", "bigbench_task_names", "load_bigbench_task"]

#: The pip requirement whose source distribution holds the BIG-bench tasks.
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
#: Where the tasks sit inside the sdist.
TASKS_DIR = "bigbench/benchmark_tasks/"
_TASKS_DIR = TASKS_DIR
_CACHE_FORMAT = 1


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _task_file(root: Path, name: str) -> Path:
    return root / "tasks" / (name.replace("/", "__") + ".json")


def _dump_task(task: Task) -> str:
    fixed = task.fixed_choices
    rows: list[list[Any]] = []
    for e in task.examples:
        row: list[Any] = [e.text, e.label, list(e.alternatives)]
        if fixed is None:
            row.insert(1, list(e.choices))
        rows.append(row)
    payload = {
        "format": _CACHE_FORMAT,
        "name": task.name,
        "prefix": task.prefix,
        "description": task.description,
        "choices": None if fixed is None else list(fixed),
        "examples": rows,
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _load_task_file(path: Path) -> Task | None:
    """The task cached in ``path``, or None if it is missing, corrupt or of another format."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != _CACHE_FORMAT:
            return None
        fixed = payload["choices"]
        examples: list[Example] = []
        if fixed is not None:
            shared = tuple(str(c) for c in fixed)
            for text, label, alts in payload["examples"]:
                examples.append(Example(text, shared, int(label), tuple(alts)))
        else:
            for text, choices, label, alts in payload["examples"]:
                examples.append(Example(text, tuple(choices), int(label), tuple(alts)))
        return Task(
            str(payload["name"]),
            tuple(examples),
            prefix=str(payload["prefix"]),
            description=str(payload["description"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _member_task_name(member: str) -> str | None:
    """The task name of a tarball member: ``".../benchmark_tasks/a/b/task.json"`` -> ``"a/b"``."""
    if not member.endswith("/task.json"):
        return None
    _, found, rest = member.partition(_TASKS_DIR)
    return rest[: -len("/task.json")] if found and rest.count("/") >= 1 else None


def _scan_tarball(
    tarball: Path, wanted: str | None, stop_early: bool = False
) -> tuple[list[str], bytes | None]:
    """Stream the tarball: the task names in it, and the bytes of ``wanted``'s task.json.

    With ``stop_early`` the scan ends at ``wanted`` (the names are then incomplete).
    """
    names: list[str] = []
    content: bytes | None = None
    try:
        with tarfile.open(tarball, mode="r|gz") as archive:
            for member in archive:
                name = _member_task_name(member.name) if member.isfile() else None
                if name is None:
                    continue
                names.append(name)
                if name == wanted:
                    handle = archive.extractfile(member)
                    content = handle.read() if handle is not None else None
                    if stop_early:
                        break
    except (OSError, tarfile.TarError, EOFError) as err:
        raise LoadError(
            f"cannot read the BIG-bench tarball {tarball} ({err}); delete it and it will be "
            "downloaded again"
        ) from err
    if not names:
        raise LoadError(f"{tarball} holds no {_TASKS_DIR}*/task.json files; is it bigbench?")
    return sorted(names), content


def _bigbench_root(cache: Path | None) -> Path:
    version = BIGBENCH_REQUIREMENT.partition("==")[2]
    return (cache_dir() if cache is None else Path(cache)) / f"bigbench-{version}"


def _tarball(root: Path) -> Path:
    return pip_download(BIGBENCH_REQUIREMENT, root.parent / "downloads")


def _read_index(root: Path) -> list[str] | None:
    try:
        names = json.loads((root / "index.json").read_text(encoding="utf-8"))["tasks"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def bigbench_task_names(cache: Path | None = None) -> list[str]:
    """The names of all BIG-bench tasks and subtasks (downloads and indexes the sdist once).

    Names with subtasks (``"multiemo"``) are listed too, although only their subtasks
    (``"multiemo/all_sentence_en"``) hold examples.

    Parameters
    ----------
    cache : Path, optional
        The cache folder (default :func:`~tera.compare.cache.cache_dir`).

    Returns
    -------
    list of str
        Sorted task names.

    Examples
    --------
    With the real sdist this lists 1041 names. Here, a stand-in laid out the same way
    (a test fixture):

    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> cache = Path(tempfile.mkdtemp())
    >>> toy = {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}
    >>> from tests.compare.fixtures import fake_bigbench_sdist
    >>> _ = fake_bigbench_sdist(cache / "downloads", {"toy": toy, "fam/sub": toy})
    >>> bigbench_task_names(cache)
    ['fam', 'fam/sub', 'toy']
    >>> shutil.rmtree(cache)
    """
    root = _bigbench_root(cache)
    names = _read_index(root)
    if names is None:
        names, _ = _scan_tarball(_tarball(root), None)
        _atomic_write_text(root / "index.json", json.dumps({"tasks": names}, indent=0))
    return names


def _check_name(name: str, names: Iterable[str]) -> None:
    """Raise LoadError for an unknown task or a family of subtasks, naming valid choices."""
    known = set(names)
    subtasks = sorted(n for n in known if n.startswith(name + "/"))
    if subtasks:
        shown = ", ".join(subtasks[:12]) + (
            f", ... ({len(subtasks)} in all)" if len(subtasks) > 12 else ""
        )
        raise LoadError(
            f"BIG-bench task {name!r} is a family of subtasks; name one of them: {shown}"
        )
    if name in known:
        return
    families = {n.partition("/")[0] for n in known if "/" in n}
    loadable = sorted(known - families)
    close = difflib.get_close_matches(name, loadable, n=5, cutoff=0.6)
    if not close:  # e.g. "all_sentence_en" for "multiemo/all_sentence_en"
        tails = {n.rsplit("/", 1)[-1]: n for n in loadable}
        close = [tails[t] for t in difflib.get_close_matches(name, sorted(tails), n=5, cutoff=0.6)]
    hint = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else (f"it is not one of the {len(known)} tasks of {BIGBENCH_REQUIREMENT}")
    )
    raise LoadError(f"no BIG-bench task named {name!r}; {hint}")


def load_bigbench_task(name: str, cache: Path | None = None) -> Task:
    """Load a BIG-bench classification or multiple-choice task by name, offline after once.

    The first call downloads the ``bigbench`` sdist into ``<cache>/downloads`` (358 MB, a
    minute or two) and streams the task's ``task.json`` out of it (~10 s per new task);
    the parsed task is kept in ``<cache>/bigbench-1.0.0/tasks``, and later calls read only
    that file.

    Parameters
    ----------
    name : str
        The task's folder under ``bigbench/benchmark_tasks``, e.g. ``"strategyqa"`` or
        ``"multiemo/all_sentence_en"``.
    cache : Path, optional
        The cache folder (default :func:`~tera.compare.cache.cache_dir`).

    Returns
    -------
    Task

    Raises
    ------
    LoadError
        For an unknown name (with close matches), a family of subtasks (listing them), a
        generative task, or a download that fails.

    Examples
    --------
    ``load_bigbench_task("multiemo/all_sentence_en")`` gives 57,466 examples with choices
    ``("ambivalent", "positive", "negative", "neutral")``. Offline, with a stand-in sdist
    (a test fixture):

    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> cache = Path(tempfile.mkdtemp())
    >>> toy = {"examples": [{"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0}},
    ...                     {"input": "2 + 3 =", "target_scores": {"4": 0, "5": 1}}]}
    >>> from tests.compare.fixtures import fake_bigbench_sdist
    >>> _ = fake_bigbench_sdist(cache / "downloads", {"arith/add": toy})
    >>> task = load_bigbench_task("arith/add", cache)
    >>> len(task), task.fixed_choices
    (2, ('4', '5'))
    >>> load_bigbench_task("arith/ad", cache)
    Traceback (most recent call last):
    ...
    tera.errors.LoadError: no BIG-bench task named 'arith/ad'; did you mean 'arith/add'?
    >>> shutil.rmtree(cache)
    """
    name = name.strip().strip("/")
    root = _bigbench_root(cache)
    path = _task_file(root, name)
    task = _load_task_file(path)
    if task is not None:
        return task
    names = _read_index(root)
    if names is not None:
        _check_name(name, names)
    start = time.perf_counter()
    print(f"tera: reading BIG-bench task {name!r} out of the sdist (once) ...", file=sys.stderr)
    if names is None:
        names, content = _scan_tarball(_tarball(root), name)
        _atomic_write_text(root / "index.json", json.dumps({"tasks": names}, indent=0))
        _check_name(name, names)
    else:
        _, content = _scan_tarball(_tarball(root), name, stop_early=True)
    if content is None:  # pragma: no cover - listed in the tarball but unreadable
        raise LoadError(f"BIG-bench task {name!r} has no readable task.json in the sdist")
    try:
        data = json.loads(content)
    except ValueError as err:
        raise LoadError(
            f"the task.json of BIG-bench task {name!r} is not valid JSON: {err}"
        ) from err
    task = parse_task_json(name, data)
    _atomic_write_text(path, _dump_task(task))
    print(
        f"tera: cached {len(task)} examples of {name!r} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return task

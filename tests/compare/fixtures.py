"""Test fixtures for the comparison's data sources (not library API)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tera.compare.bigbench import BIGBENCH_REQUIREMENT, TASKS_DIR

_TASKS_DIR = TASKS_DIR


def fake_bigbench_sdist(dest: Path, tasks: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a stand-in for the ``bigbench`` sdist holding the given ``task.json`` contents.

    The tarball has the real one's name and layout (``bigbench-1.0.0/bigbench/
    benchmark_tasks/<name>/task.json``, with an example-less ``task.json`` for each family
    of subtasks), so :func:`load_bigbench_task` reads it exactly like the real one when it
    sits in ``<cache>/downloads``.

    Parameters
    ----------
    dest : Path
        The folder to write into (created if missing).
    tasks : mapping of str to mapping
        Task name (``"name"`` or ``"family/subtask"``) to its ``task.json`` object.

    Returns
    -------
    Path
        The tarball, ``dest / "bigbench-1.0.0.tar.gz"``.

    Examples
    --------
    >>> import shutil, tarfile, tempfile
    >>> from pathlib import Path
    >>> tmp = Path(tempfile.mkdtemp())
    >>> path = fake_bigbench_sdist(tmp, {"fam/sub": {"examples": []}})
    >>> with tarfile.open(path) as archive:
    ...     for name in sorted(archive.getnames()):
    ...         print(name)
    bigbench-1.0.0/bigbench/benchmark_tasks/fam/sub/task.json
    bigbench-1.0.0/bigbench/benchmark_tasks/fam/task.json
    >>> shutil.rmtree(tmp)
    """
    version = BIGBENCH_REQUIREMENT.partition("==")[2]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = {name: dict(data) for name, data in tasks.items()}
    for name in list(files):
        family = name.partition("/")[0]
        if family != name and family not in files:
            files[family] = {"name": family, "description": "subtasks"}
    path = dest / f"bigbench-{version}.tar.gz"
    with tarfile.open(path, mode="w:gz") as archive:
        for name, data in sorted(files.items()):
            payload = json.dumps(data).encode()
            info = tarfile.TarInfo(f"bigbench-{version}/{_TASKS_DIR}{name}/task.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path

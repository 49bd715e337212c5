"""The comparison's JSON files (run records, compare.json, results.json), written atomically.

Examples
--------
>>> import json, tempfile
>>> from pathlib import Path
>>> from tera.compare.jsonfile import jsonable, write_json
>>> jsonable({1: (0.5, float("nan"))})
{'1': [0.5, None]}
>>> path = Path(tempfile.mkdtemp()) / "sub" / "r.json"
>>> write_json(path, {"accuracy": 0.5})
>>> json.loads(path.read_text())
{'accuracy': 0.5}
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["jsonable", "write_json"]


def jsonable(obj: Any) -> Any:
    """``obj`` with string keys, lists for tuples and ``None`` for non-finite floats."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (folders created), atomically.

    Through a temporary file and a rename, so an interrupted write never leaves a half-written
    file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(json.dumps(jsonable(data), indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

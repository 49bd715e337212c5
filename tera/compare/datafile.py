r"""Task files of your own: JSONL or CSV rows turned into a :class:`~tera.compare.examples.Task`.

Two row shapes are accepted (one per file):

* **multiple choice**: ``{"question": str, "choices": [str, ...], "answer": int | str}``;
  ``answer`` is the index of the correct choice or its text. If every row has the same
  choices in the same order, the task is a classification over them.
* **classification**: ``{"text": str, "label": str | int}``; the labels are the distinct
  values of ``label``, in order of first appearance (ints are sorted, so label ``0`` is
  class 0).

In a CSV file, ``choices`` is a JSON list (``"[""yes"", ""no""]"``) or choices separated by
``|``. A malformed row raises :class:`~tera.errors.LoadError` naming the file, the line and
the field; no row is ever dropped silently, so ``len(task)`` is the number of data rows.
Splits are then drawn as for BIG-bench tasks (:func:`~tera.compare.examples.make_splits`).

Examples
--------
>>> import json, tempfile
>>> from pathlib import Path
>>> from tera.compare.datafile import load_task_file
>>> path = Path(tempfile.mkdtemp()) / "toy.jsonl"
>>> rows = [{"text": "great film", "label": "pos"}, {"text": "dull", "label": "neg"}]
>>> _ = path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
>>> task = load_task_file(path)
>>> task.name, len(task), task.fixed_choices
('toy', 2, ('pos', 'neg'))
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tera.compare.examples import Example, Task
from tera.errors import LoadError

__all__ = ["TASK_FILE_SUFFIXES", "load_task_file"]

#: File name endings :func:`load_task_file` reads.
TASK_FILE_SUFFIXES = (".jsonl", ".json", ".csv")

_MC_FIELDS = ("question", "choices", "answer")
_CLS_FIELDS = ("text", "label")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise LoadError(f"{path}, line {line_no}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise LoadError(
                    f"{path}, line {line_no}: a row must be a JSON object such as "
                    f'{{"text": ..., "label": ...}}, got {type(row).__name__}'
                )
            yield line_no, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise LoadError(f"{path}: no header row; the first line must name the columns")
        for row in reader:
            if None in row:  # more cells than the header has columns
                raise LoadError(
                    f"{path}, line {reader.line_num}: {len(row) - 1 + len(row[None])} cells "
                    f"for {len(reader.fieldnames)} columns {reader.fieldnames}"
                )
            if not any((v or "").strip() for v in row.values()):
                continue
            yield reader.line_num, dict(row)


def _csv_choices(value: str, where: str) -> list[str]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as err:
            raise LoadError(f"{where}: field 'choices' is not a JSON list ({err})") from None
        return parsed if isinstance(parsed, list) else [text]
    return [c.strip() for c in text.split("|")]


def _answer_index(answer: Any, choices: list[str], where: str, from_csv: bool) -> int:
    numeric = isinstance(answer, str) and answer.strip().lstrip("-").isdigit()
    if from_csv and numeric and answer.strip() not in choices:
        answer = int(answer)
    if isinstance(answer, bool):
        raise LoadError(
            f"{where}: field 'answer' must be an index or a choice's text, got {answer}"
        )
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise LoadError(
                f"{where}: field 'answer' = {answer} is out of range for {len(choices)} "
                f"choices; use 0..{len(choices) - 1} or the choice's text"
            )
        return answer
    if isinstance(answer, str):
        if answer not in choices:
            raise LoadError(
                f"{where}: field 'answer' = {answer!r} is not one of the choices {choices}"
            )
        return choices.index(answer)
    raise LoadError(
        f"{where}: field 'answer' must be an index or a choice's text, got {type(answer).__name__}"
    )


def _text(row: dict[str, Any], name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        raise LoadError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def _multiple_choice(rows: list[tuple[int, dict[str, Any]]], path: Path, from_csv: bool) -> Task:
    examples = []
    for line_no, row in rows:
        where = f"{path}, line {line_no}"
        question = _text(row, "question", where)
        choices: Any = row.get("choices")
        if from_csv and isinstance(choices, str):
            choices = _csv_choices(choices, where)
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise LoadError(
                f"{where}: field 'choices' must be a list of two or more non-empty strings, "
                f"got {row.get('choices')!r}"
            )
        if len(set(choices)) != len(choices):
            raise LoadError(f"{where}: field 'choices' repeats a choice: {choices}")
        if "answer" not in row:
            raise LoadError(f"{where}: field 'answer' is missing")
        label = _answer_index(row["answer"], choices, where, from_csv)
        examples.append(Example(question, tuple(choices), label))
    return Task(path.stem, tuple(examples), description=f"rows of {path.name}")


def _classification(rows: list[tuple[int, dict[str, Any]]], path: Path, from_csv: bool) -> Task:
    texts, labels = [], []
    for line_no, row in rows:
        where = f"{path}, line {line_no}"
        texts.append(_text(row, "text", where))
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise LoadError(f"{where}: field 'label' must be a string or an int, got {label!r}")
        if isinstance(label, str) and not label.strip():
            raise LoadError(f"{where}: field 'label' is empty")
        labels.append(label)
    if from_csv and all(isinstance(v, str) and v.strip().lstrip("-").isdigit() for v in labels):
        labels = [int(v) for v in labels]
    kinds = {type(v) for v in labels}
    if len(kinds) > 1:
        raise LoadError(f"{path}: field 'label' mixes ints and strings; use one or the other")
    distinct = sorted(set(labels)) if int in kinds else list(dict.fromkeys(labels))
    if len(distinct) < 2:
        raise LoadError(
            f"{path}: every row has label {distinct[0]!r}; a classification task needs two "
            "or more labels"
        )
    choices = tuple(str(v) for v in distinct)
    index = {v: i for i, v in enumerate(distinct)}
    examples = tuple(Example(t, choices, index[v]) for t, v in zip(texts, labels, strict=True))
    return Task(path.stem, examples, description=f"rows of {path.name}")


def load_task_file(path: str | Path) -> Task:
    r"""Read a JSONL (or JSON-lines ``.json``) or CSV task file (row shapes in the module doc).

    Parameters
    ----------
    path : str or Path
        The file. Its stem names the task (``data/reviews.jsonl`` -> ``"reviews"``).

    Returns
    -------
    Task
        One example per data row (blank lines are not rows).

    Raises
    ------
    LoadError
        For a missing file, another format, no rows, rows of both shapes, or a malformed row
        (the message names the file, the line and the field).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "quiz.csv"
    >>> _ = path.write_text('question,choices,answer\n2 + 2 =,3|4,4\nsky is,blue|red,0\n')
    >>> task = load_task_file(path)
    >>> [(e.text, e.choices, e.label) for e in task.examples]
    [('2 + 2 =', ('3', '4'), 1), ('sky is', ('blue', 'red'), 0)]
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"task file {path} does not exist")
    if path.suffix.lower() not in TASK_FILE_SUFFIXES:
        raise LoadError(
            f"task file {path}: unknown format {path.suffix!r}; use one of "
            f"{', '.join(TASK_FILE_SUFFIXES)} (JSON lines or CSV with a header)"
        )
    from_csv = path.suffix.lower() == ".csv"
    rows = list(_csv_rows(path) if from_csv else _jsonl_rows(path))
    if not rows:
        raise LoadError(f"task file {path} holds no rows")
    shapes = []
    for line_no, row in rows:
        has_mc, has_cls = "question" in row, "text" in row
        if has_mc == has_cls:
            raise LoadError(
                f"{path}, line {line_no}: a row needs either the fields "
                f"{list(_MC_FIELDS)} (multiple choice) or {list(_CLS_FIELDS)} "
                f"(classification); found {sorted(row)}"
            )
        shapes.append(has_mc)
    if len(set(shapes)) > 1:
        first_cls = shapes.index(False) if shapes[0] else shapes.index(True)
        raise LoadError(
            f"{path}, line {rows[first_cls][0]}: the file mixes multiple-choice rows "
            "(question/choices/answer) and classification rows (text/label); use one shape"
        )
    return (_multiple_choice if shapes[0] else _classification)(rows, path, from_csv)

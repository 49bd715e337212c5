"""Labelled tasks for the comparison: BIG-bench tasks read offline, splits, a synthetic task.

A task is a tuple of :class:`Example` (a text, its candidate answers and the index of the
correct one). Classification tasks share one label set across examples
(:attr:`Task.fixed_choices`); multiple-choice tasks have their own candidates per example.

BIG-bench tasks come from the ``bigbench==1.0.0`` source distribution on PyPI (358 MB,
downloaded once with ``pip download``; it is never installed). A task's ``task.json`` is
streamed out of the tarball once, parsed and kept as a small JSON file in the cache, so
later loads take well under a second and never touch the tarball. Tasks are named as
their folders under ``bigbench/benchmark_tasks``: ``"strategyqa"``, or
``"multiemo/all_sentence_en"`` for a subtask.

How a ``task.json`` becomes examples:

* every example has ``target_scores`` (a dict choice -> score): the choices are its keys
  in file order and the label is the first highest-scoring one; other choices with the same
  top score are kept as ``Example.alternatives``. Examples with fewer than two choices
  or with all scores equal are dropped. If every example has the same set of choices, they
  are put in the first example's order, making a classification task;
* only ``target`` (a string, or a list of acceptable strings whose first one is used):
  accepted as a classification task whose labels are the distinct targets when there are
  2 to :data:`MAX_TARGET_LABELS` of them and at least five examples per label on average
  (examples without a string target are dropped); otherwise the task is generative and
  refused.

Examples
--------
>>> from tera.compare.data import make_splits, synthetic_task
>>> task = synthetic_task(n=40)
>>> task.fixed_choices
('sports', 'weather', 'food', 'music')
>>> splits = make_splits(task, n_train=20, n_validation=10, n_test=10)
>>> len(splits.train), len(splits.validation), len(splits.test)
(20, 10, 10)
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tera.compare.cache import cache_dir, pip_download
from tera.errors import LoadError, TeraError

__all__ = [
    "BIGBENCH_REQUIREMENT",
    "MAX_TARGET_LABELS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_VOCABULARY",
    "TEST_SPLIT_SEED",
    "Example",
    "SplitError",
    "Splits",
    "Task",
    "bigbench_task_names",
    "fake_bigbench_sdist",
    "load_bigbench_task",
    "make_splits",
    "parse_task_json",
    "synthetic_task",
]

#: The pip requirement whose source distribution holds the BIG-bench tasks.
BIGBENCH_REQUIREMENT = "bigbench==1.0.0"
#: The most distinct ``target`` strings a target-only task may have to count as classification.
MAX_TARGET_LABELS = 20
#: The seed of the shuffle the test split is taken from (the same for every run seed).
TEST_SPLIT_SEED = 12345

_TASKS_DIR = "bigbench/benchmark_tasks/"
_CACHE_FORMAT = 1


class SplitError(TeraError, ValueError):
    """A task has too few examples for the requested splits (names both sizes)."""


@dataclass(frozen=True)
class Example:
    """One labelled example: a text, its candidate answers and the correct one.

    Attributes
    ----------
    text : str
        The input (a sentence to classify, or a question).
    choices : tuple of str
        The candidate answers; for classification tasks, the label names.
    label : int
        Index in ``choices`` of the correct answer.
    alternatives : tuple of int
        Indices of other answers that are just as correct (BIG-bench ``target_scores``
        sometimes give several the top score, e.g. ``"3"`` and ``"three"``); usually empty.

    Examples
    --------
    >>> ex = Example("Is the sky blue?", ("yes", "no"), 0)
    >>> ex.answer, ex.is_correct(0), ex.is_correct(1)
    ('yes', True, False)
    """

    text: str
    choices: tuple[str, ...]
    label: int
    alternatives: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.choices)
        if not 0 <= self.label < n or any(not 0 <= a < n for a in self.alternatives):
            raise LoadError(
                f"label {self.label} (alternatives {list(self.alternatives)}) is out of range "
                f"for {n} choices {list(self.choices)}; use indices 0..{n - 1}"
            )

    @property
    def answer(self) -> str:
        """The text of the correct choice.

        Examples
        --------
        >>> Example("2 + 2 =", ("3", "4"), 1).answer
        '4'
        """
        return self.choices[self.label]

    def is_correct(self, index: int) -> bool:
        """Whether predicting choice ``index`` counts as correct (label or an alternative).

        Parameters
        ----------
        index : int
            A predicted choice index.

        Returns
        -------
        bool
            True for the label and its alternatives.

        Examples
        --------
        >>> ex = Example("How many?", ("2", "3", "three"), 1, alternatives=(2,))
        >>> [ex.is_correct(i) for i in range(3)]
        [False, True, True]
        """
        return index == self.label or index in self.alternatives


@dataclass(frozen=True)
class Task:
    """A named tuple of examples, with the metadata BIG-bench gives.

    Attributes
    ----------
    name : str
        The task's name, e.g. ``"multiemo/all_sentence_en"``.
    examples : tuple of Example
        All examples, in file order.
    prefix : str
        BIG-bench's ``task_prefix`` (an instruction to put before the inputs), or ``""``.
    description : str
        BIG-bench's one-line description, or ``""``.

    Examples
    --------
    >>> task = Task("toy", (Example("good", ("neg", "pos"), 1), Example("bad", ("neg", "pos"), 0),
    ...                     Example("fine", ("neg", "pos"), 1)))
    >>> task.fixed_choices, round(task.majority_accuracy, 3), task.chance_accuracy
    (('neg', 'pos'), 0.667, 0.5)
    """

    name: str
    examples: tuple[Example, ...]
    prefix: str = ""
    description: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    @cached_property
    def fixed_choices(self) -> tuple[str, ...] | None:
        """The shared label set if every example has the same choices in the same order.

        None for multiple-choice tasks (or an empty task).

        Examples
        --------
        >>> Task("mc", (Example("q1", ("a", "b"), 0), Example("q2", ("c", "d"), 1))).fixed_choices
        """
        if not self.examples:
            return None
        first = self.examples[0].choices
        return first if all(e.choices == first for e in self.examples) else None

    @cached_property
    def majority_accuracy(self) -> float:
        """Accuracy of always giving the most often correct answer.

        The answer is a label name for classification tasks and a choice position (the
        best constant index) for multiple-choice tasks; alternatives count as correct.

        Examples
        --------
        >>> synthetic_task(n=40).majority_accuracy
        0.25
        """
        if not self.examples:
            return 0.0
        hits: Counter[Any] = Counter()
        fixed = self.fixed_choices is not None
        for e in self.examples:
            for i in {e.label, *e.alternatives}:
                hits[e.choices[i] if fixed else i] += 1
        return max(hits.values()) / len(self.examples)

    @property
    def chance_accuracy(self) -> float:
        """Expected accuracy of guessing uniformly among each example's choices.

        Examples
        --------
        >>> two, four = Example("q", ("a", "b"), 0), Example("r", ("a", "b", "c", "d"), 0)
        >>> Task("t", (two, four)).chance_accuracy
        0.375
        """
        if not self.examples:
            return 0.0
        total = sum((1 + len(e.alternatives)) / len(e.choices) for e in self.examples)
        return total / len(self.examples)


@dataclass(frozen=True)
class Splits:
    """Disjoint train / validation / test examples drawn from one task.

    Examples
    --------
    >>> s = make_splits(synthetic_task(n=12), n_train=6, n_validation=3, n_test=3)
    >>> [len(part) for part in (s.train, s.validation, s.test)]
    [6, 3, 3]
    """

    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]


def _order(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by ``seed``, the same on every platform/version.

    Sorting by a keyed BLAKE2 hash of the index does not depend on any RNG stream.
    """
    salt = str(seed).encode()

    def key(i: int) -> bytes:
        return hashlib.blake2b(str(i).encode(), digest_size=8, key=salt[:64]).digest()

    return sorted(range(n), key=key)


def make_splits(task: Task, n_train: int, n_validation: int, n_test: int, seed: int = 0) -> Splits:
    """Draw disjoint train, validation and test splits; the test split ignores ``seed``.

    The test split is the first ``n_test`` examples of a fixed shuffle (seed
    :data:`TEST_SPLIT_SEED`), so every method and every run seed is scored on the same
    examples, and a larger ``n_test`` only adds examples. The validation and train splits
    are drawn, in that order, from a ``seed``-dependent shuffle of the remaining examples.
    Shuffles sort by a keyed hash, so they are identical on every platform and version.

    Parameters
    ----------
    task : Task
        The task to split.
    n_train, n_validation, n_test : int
        Sizes of the splits (non-negative; their sum must not exceed ``len(task)``).
    seed : int
        Picks the train and validation examples.

    Returns
    -------
    Splits
        Tuples of examples, in shuffled order.

    Raises
    ------
    SplitError
        If a size is negative or the task has fewer examples than requested.

    Examples
    --------
    >>> task = synthetic_task(n=100)
    >>> a, b = make_splits(task, 50, 10, 20, seed=0), make_splits(task, 50, 10, 20, seed=1)
    >>> a.test == b.test, a.train == b.train
    (True, False)
    """
    sizes = {"n_train": n_train, "n_validation": n_validation, "n_test": n_test}
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SplitError(f"{key} must be a non-negative int, got {value!r}")
    total = n_train + n_validation + n_test
    if total > len(task.examples):
        raise SplitError(
            f"task {task.name!r} has {len(task.examples)} examples, fewer than the "
            f"{total} requested (n_train={n_train} + n_validation={n_validation} + "
            f"n_test={n_test}); ask for at most {len(task.examples)} in all"
        )
    fixed = _order(len(task.examples), TEST_SPLIT_SEED)
    test, rest = fixed[:n_test], fixed[n_test:]
    rest = [rest[i] for i in _order(len(rest), seed)]
    validation, train = rest[:n_validation], rest[n_validation : n_validation + n_train]

    def pick(indices: list[int]) -> tuple[Example, ...]:
        return tuple(task.examples[i] for i in indices)

    return Splits(train=pick(train), validation=pick(validation), test=pick(test))


# --------------------------------------------------------------------------- synthetic task

#: The four labels of :func:`synthetic_task`, in label order.
SYNTHETIC_CLASSES = ("sports", "weather", "food", "music")
_KEYWORDS = {
    "sports": ("football", "tennis", "match", "goal", "team", "player", "race", "stadium"),
    "weather": ("rain", "snow", "storm", "sunshine", "wind", "cloud", "forecast", "fog"),
    "food": ("pizza", "bread", "soup", "salad", "cheese", "dinner", "recipe", "apple"),
    "music": ("guitar", "song", "piano", "concert", "band", "melody", "drum", "singer"),
}
_SUBJECTS = ("i", "we", "they", "she", "he", "my friend", "the old man", "our neighbour")
_VERBS = ("talked about", "liked", "watched", "heard about", "read about", "remembered")
_DETERMINERS = ("the", "a", "some", "this", "that")
_ENDINGS = ("yesterday", "today", "again", "all day", "at noon", "last week", "")
#: Every word :func:`synthetic_task` can produce (the tiny models' tokenizers know them all).
SYNTHETIC_VOCABULARY: tuple[str, ...] = tuple(
    sorted(
        {
            word
            for group in (
                SYNTHETIC_CLASSES,
                *_KEYWORDS.values(),
                _SUBJECTS,
                _VERBS,
                _DETERMINERS,
                _ENDINGS,
            )
            for phrase in group
            for word in phrase.split()
        }
        | {"."}
    )
)


def synthetic_task(name: str = "synthetic", n: int = 600, seed: int = 0) -> Task:
    """A small, learnable, balanced 4-class topic task built from templates (no download).

    Each sentence names one topic keyword among neutral words, e.g. ``"we watched the
    tennis today ."``; the label is the keyword's topic (:data:`SYNTHETIC_CLASSES`).
    Labels are balanced (``n // 4`` or one more each) and in shuffled order.

    Parameters
    ----------
    name : str
        The task's name.
    n : int
        Number of examples (at least 1).
    seed : int
        Fixes the sentences and their order.

    Returns
    -------
    Task
        A classification task whose choices are :data:`SYNTHETIC_CLASSES`.

    Examples
    --------
    >>> task = synthetic_task(n=8, seed=0)
    >>> len(task), task.fixed_choices
    (8, ('sports', 'weather', 'food', 'music'))
    >>> sorted(Counter(e.label for e in task.examples).values())
    [2, 2, 2, 2]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SplitError(f"n must be a positive int, got {n!r}")
    rng = random.Random(f"tera-synthetic-{seed}")  # str seeds hash stably (sha512)

    def pick(options: Sequence[str]) -> str:
        # random() itself is the one stream Python guarantees stable across versions.
        return options[int(rng.random() * len(options))]

    labels = [i % len(SYNTHETIC_CLASSES) for i in range(n)]
    labels = [labels[i] for i in _order(n, seed)]
    examples = []
    for label in labels:
        words = [pick(_SUBJECTS), pick(_VERBS), pick(_DETERMINERS)]
        words.append(pick(_KEYWORDS[SYNTHETIC_CLASSES[label]]))
        words.append(pick(_ENDINGS))
        text = " ".join(w for w in words if w) + " ."
        examples.append(Example(text, SYNTHETIC_CLASSES, label))
    return Task(name, tuple(examples), description="synthetic 4-topic classification")


# --------------------------------------------------------------------------- task.json parsing


def _target_text(target: Any) -> str | None:
    if isinstance(target, str):
        return target
    if isinstance(target, list) and target and isinstance(target[0], str):
        return target[0]
    return None


def _canonical_order(examples: list[Example]) -> list[Example]:
    """Put every example's choices in the first example's order when they share one set."""
    first = examples[0].choices
    if len(set(first)) != len(first) or any(
        len(e.choices) != len(first) or set(e.choices) != set(first) for e in examples
    ):
        return examples
    position = {c: i for i, c in enumerate(first)}
    out = []
    for e in examples:
        if e.choices == first:
            out.append(Example(e.text, first, e.label, e.alternatives))
            continue
        alts = tuple(sorted(position[e.choices[a]] for a in e.alternatives))
        out.append(Example(e.text, first, position[e.choices[e.label]], alts))
    return out


def parse_task_json(name: str, data: Mapping[str, Any]) -> Task:
    """Turn a parsed BIG-bench ``task.json`` into a :class:`Task` (rules in the module doc).

    Parameters
    ----------
    name : str
        The task's name (for the result and for error messages).
    data : mapping
        The JSON object: ``{"examples": [{"input": ..., "target_scores": {...}}, ...], ...}``.

    Returns
    -------
    Task

    Raises
    ------
    LoadError
        If there are no examples, an example has no input, or the task is generative
        (free-form ``target`` strings).

    Examples
    --------
    >>> data = {"task_prefix": "Is it positive?", "examples": [
    ...     {"input": "great", "target_scores": {"yes": 1, "no": 0}},
    ...     {"input": "awful", "target_scores": {"no": 1, "yes": 0}}]}
    >>> task = parse_task_json("toy", data)
    >>> task.fixed_choices, [e.label for e in task.examples], task.prefix
    (('yes', 'no'), [0, 1], 'Is it positive?')
    """
    raw = data.get("examples")
    if not isinstance(raw, list) or not raw:
        raise LoadError(f"BIG-bench task {name!r} has no examples in its task.json")
    for i, ex in enumerate(raw):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise LoadError(f"example {i} of BIG-bench task {name!r} has no string 'input'")
    examples: list[Example] = []
    if all(isinstance(ex.get("target_scores"), dict) for ex in raw):
        for ex in raw:
            scores = {str(k): float(v) for k, v in ex["target_scores"].items()}
            values = list(scores.values())
            if len(values) < 2 or max(values) == min(values):
                continue
            top = max(values)
            best = [i for i, v in enumerate(values) if v == top]
            examples.append(Example(ex["input"], tuple(scores), best[0], tuple(best[1:])))
        if not examples:
            raise LoadError(
                f"BIG-bench task {name!r}: no example has two or more choices with different "
                "target_scores"
            )
    elif any("target_scores" in ex for ex in raw):
        have = sum("target_scores" in ex for ex in raw)
        raise LoadError(
            f"BIG-bench task {name!r} gives target_scores for only {have} of {len(raw)} "
            "examples; cannot read it as a classification or multiple-choice task"
        )
    else:
        targets = [_target_text(ex.get("target")) for ex in raw]
        labels = list(dict.fromkeys(t for t in targets if t is not None))
        usable = sum(t is not None for t in targets)
        if not 2 <= len(labels) <= MAX_TARGET_LABELS or usable < 5 * len(labels):
            raise LoadError(
                f"BIG-bench task {name!r} is generative ({len(labels)} distinct free-form "
                f"targets over {len(raw)} examples, no target_scores); only classification "
                f"(2..{MAX_TARGET_LABELS} labels, 5+ examples each on average) and "
                "multiple-choice tasks can be compared"
            )
        choices = tuple(labels)
        index = {c: i for i, c in enumerate(choices)}
        examples = [
            Example(ex["input"], choices, index[t])
            for ex, t in zip(raw, targets, strict=True)
            if t is not None
        ]
    prefix = data.get("task_prefix")
    description = data.get("description")
    return Task(
        name,
        tuple(_canonical_order(examples)),
        prefix=prefix if isinstance(prefix, str) else "",
        description=description if isinstance(description, str) else "",
    )


# --------------------------------------------------------------------------- the BIG-bench cache


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


def fake_bigbench_sdist(dest: Path, tasks: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a stand-in for the ``bigbench`` sdist holding the given ``task.json`` contents.

    The tarball has the real one's name and layout (``bigbench-1.0.0/bigbench/
    benchmark_tasks/<name>/task.json``, with an example-less ``task.json`` for each family
    of subtasks), so :func:`load_bigbench_task` reads it exactly like the real one when it
    sits in ``<cache>/downloads``. For tests and offline examples.

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
    With the real sdist this lists 1041 names. Here, a stand-in laid out the same way:

    >>> import shutil, tempfile
    >>> cache = Path(tempfile.mkdtemp())
    >>> toy = {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}
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
    ``('ambivalent', 'positive', 'negative', 'neutral')``. Offline, with a stand-in sdist:

    >>> import shutil, tempfile
    >>> cache = Path(tempfile.mkdtemp())
    >>> toy = {"examples": [{"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0}},
    ...                     {"input": "2 + 3 =", "target_scores": {"4": 0, "5": 1}}]}
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

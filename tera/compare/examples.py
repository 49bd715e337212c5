"""Examples, tasks and splits: the data model every task source produces.

A task is a tuple of :class:`Example` (a text, its candidate answers and the index of the
correct one). Classification tasks share one label set across examples
(:attr:`Task.fixed_choices`); multiple-choice tasks have their own candidates per example.
:func:`make_splits` draws disjoint train / validation / test splits, the test split fixed
for every run seed.

Examples
--------
>>> from tera.compare.examples import Example, Task, make_splits
>>> task = Task("toy", tuple(Example(f"text {i}", ("a", "b"), i % 2) for i in range(10)))
>>> splits = make_splits(task, n_train=6, n_validation=2, n_test=2)
>>> len(splits.train), len(splits.validation), len(splits.test)
(6, 2, 2)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tera.errors import LoadError, TeraError

__all__ = ["TEST_SPLIT_SEED", "Example", "SplitError", "Splits", "Task", "make_splits"]

#: The seed of the shuffle the test split is taken from (the same for every run seed).
TEST_SPLIT_SEED = 12345


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
        >>> Task("t", (Example("x", ("a", "b"), 0), Example("y", ("a", "b"), 1))).majority_accuracy
        0.5
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
    >>> task = Task("t", tuple(Example(str(i), ("a", "b"), i % 2) for i in range(12)))
    >>> s = make_splits(task, n_train=6, n_validation=3, n_test=3)
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
    >>> task = Task("t", tuple(Example(str(i), ("a", "b"), i % 2) for i in range(100)))
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

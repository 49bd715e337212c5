"""A small, learnable 4-class topic task built from templates (no download), for tests.

Examples
--------
>>> from tera.compare.synthetic import synthetic_task
>>> synthetic_task(n=40).fixed_choices
('sports', 'weather', 'food', 'music')
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tera.compare.examples import Example, SplitError, Task, _order

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_VOCABULARY", "synthetic_task"]

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
    >>> from collections import Counter
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

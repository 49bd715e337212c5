"""BIG-bench ``task.json`` files turned into tasks.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tera.compare.examples import Example, Task
from tera.errors import LoadError

__all__ = ["MAX_TARGET_LABELS", "parse_task_json"]

#: The most distinct ``target`` strings a target-only task may have to count as classification.
MAX_TARGET_LABELS = 20


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
    """Turn a parsed BIG-bench ``task.json`` into a task (rules in the module doc).

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

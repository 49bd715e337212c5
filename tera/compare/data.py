"""Tasks for the comparison in one namespace: splits, synthetic, BIG-bench, your own files.

The pieces live in single-purpose modules: :mod:`tera.compare.examples` (the data model
and splits), :mod:`tera.compare.synthetic`, :mod:`tera.compare.taskjson` (BIG-bench's
``task.json`` format), :mod:`tera.compare.bigbench` (the offline sdist cache) and
:mod:`tera.compare.datafile` (JSONL / CSV files); this module re-exports them.

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

from tera.compare.bigbench import BIGBENCH_REQUIREMENT, bigbench_task_names, load_bigbench_task
from tera.compare.datafile import load_task_file
from tera.compare.examples import TEST_SPLIT_SEED, Example, SplitError, Splits, Task, make_splits
from tera.compare.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_VOCABULARY, synthetic_task
from tera.compare.taskjson import MAX_TARGET_LABELS, parse_task_json

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
    "load_bigbench_task",
    "load_task_file",
    "make_splits",
    "parse_task_json",
    "synthetic_task",
]

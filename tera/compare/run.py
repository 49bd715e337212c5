"""``compare``: every method, same model, same splits, same budget; lr tuned on validation."""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tera import __version__
from tera.compare.data import Task, load_bigbench_task, make_splits, synthetic_task
from tera.compare.methods import Method, for_model_kind, parse_methods
from tera.compare.models import (
    LoadedModel,
    load_minilm_classifier,
    load_smollm2,
    tiny_causal_lm,
    tiny_classifier,
)
from tera.compare.presets import Preset
from tera.compare.train import RunResult, train_run

__all__ = ["MODEL_KINDS", "compare", "load_task", "model_loader"]

MODEL_KINDS: dict[str, str] = {
    "minilm": "classifier",
    "tiny": "classifier",
    "smollm2": "causal_lm",
    "tiny-lm": "causal_lm",
}
"""What each model of ``--model`` is. A classifier gets a new task head; a causal LM is
fine-tuned on ``question -> answer`` text and scored by likelihood.
"""
CLASSIFIERS = tuple(m for m, kind in MODEL_KINDS.items() if kind == "classifier")


def load_task(name: str) -> Task:
    """A BIG-bench task by name, or the built-in ``synthetic`` task.

    Examples
    --------
    >>> from tera.compare.run import load_task
    >>> task = load_task("synthetic")
    >>> task.name, len(task.fixed_choices)
    ('synthetic', 4)
    """
    return synthetic_task() if name == "synthetic" else load_bigbench_task(name)


def model_loader(model: str, task: Task, seed: int) -> Callable[[], LoadedModel]:
    """A function returning a fresh copy of ``model`` set up for ``task``.

    Examples
    --------
    >>> from tera.compare.run import load_task, model_loader
    >>> loaded = model_loader("tiny", load_task("synthetic"), seed=0)()
    >>> loaded.kind, loaded.model.config.num_labels
    ('classifier', 4)
    """
    n_labels = len(task.fixed_choices or ())
    if model in CLASSIFIERS and not n_labels:
        raise ValueError(
            f"task {task.name!r} is multiple choice (its choices vary per example); use a "
            "causal LM (--model smollm2) for it"
        )
    loaders: dict[str, Callable[[], LoadedModel]] = {
        "minilm": partial(load_minilm_classifier, n_labels, seed),
        "tiny": partial(tiny_classifier, n_labels, seed),
        "smollm2": load_smollm2,
        "tiny-lm": partial(tiny_causal_lm, seed),
    }
    if model not in loaders:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(loaders)}")
    return loaders[model]


def _search_lr(
    method: Method,
    load: Callable[[], LoadedModel],
    splits: Any,
    preset: Preset,
    log: Callable[[str], None],
) -> tuple[float | None, dict[str, float]]:
    if not method.trains:
        return None, {}
    if len(method.lr_grid) == 1 or preset.search_steps == 0:
        return method.lr_grid[0], {}
    settings = dataclasses.replace(preset.settings, steps=preset.search_steps)
    trials: dict[str, float] = {}
    final_loss: dict[float, float] = {}
    for lr in method.lr_grid:
        r = train_run(
            load,
            method,
            splits.train,
            splits.validation,
            lr,
            settings,
            seed=0,
            desc=f"{method.name} lr={lr:g}",
        )
        trials[f"{lr:g}"] = r.accuracy
        tail = r.losses[-10:] or [float("inf")]
        final_loss[lr] = sum(tail) / len(tail)
        log(f"  {method.label:<14} lr={lr:<8g} validation accuracy {r.accuracy:.3f}")
    # best validation accuracy; ties (common on short budgets) go to the lower training loss
    best = max(method.lr_grid, key=lambda lr: (trials[f"{lr:g}"], -final_loss[lr]))
    return best, trials


def compare(
    preset: Preset,
    out: str | Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the comparison described by ``preset`` and write the reports to ``out``.

    For every task and method: pick the learning rate from the method's grid on the
    validation split (``preset.search_steps`` steps per point, seed 0), then train
    ``preset.seeds`` runs at that rate with the full budget and report their accuracy on
    the test split, which nothing else looks at. On a causal LM ``head`` is the zero-shot
    baseline (:data:`~tera.compare.methods.ZERO_SHOT`): evaluated, never trained.

    Parameters
    ----------
    preset : Preset
        Model, tasks, methods, split sizes, seeds and budget
        (:data:`~tera.compare.presets.PRESETS`).
    out : str or Path
        Folder of the reports (created): ``results.json``, ``results.md`` and the plots.
    log : callable
        Receives one line per trial and run (``print`` by default).

    Returns
    -------
    dict
        The content of ``results.json``.

    Examples
    --------
    >>> import tempfile
    >>> from tera.compare.presets import PRESETS
    >>> from tera.compare.run import compare
    >>> preset = PRESETS["smoke"].with_overrides(methods=("tera", "head"), seeds=1)
    >>> with tempfile.TemporaryDirectory() as out:
    ...     results = compare(preset, out, log=lambda line: None)
    >>> [e["label"] for e in results["methods"].values()]
    ['TeRA', 'Head only']
    >>> sorted(results["methods"]["tera"]["tasks"]["synthetic"]["lr_search"])
    ['0.01', '0.03', '0.1']
    """
    from tera.compare.report import write_reports

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preset.model not in MODEL_KINDS:
        raise ValueError(f"unknown model {preset.model!r}; choose from {', '.join(MODEL_KINDS)}")
    methods = [for_model_kind(m, MODEL_KINDS[preset.model]) for m in parse_methods(preset.methods)]
    start = time.perf_counter()
    results: dict[str, Any] = {
        "tera_version": __version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "preset": {k: v for k, v in preset.__dict__.items() if k != "settings"},
        "settings": preset.settings.__dict__,
        "tasks": {},
        "methods": {
            m.name: {"label": m.label, "lr_grid": list(m.lr_grid), "trains": m.trains, "tasks": {}}
            for m in methods
        },
    }
    for task_name in preset.tasks:
        task = load_task(task_name)
        splits = make_splits(task, preset.n_train, preset.n_validation, preset.n_test, seed=0)
        results["tasks"][task_name] = {
            "n_train": len(splits.train),
            "n_validation": len(splits.validation),
            "n_test": len(splits.test),
            "majority_accuracy": task.majority_accuracy,
        }
        log(
            f"{task_name}: {len(splits.train)} train / {len(splits.validation)} validation"
            f" / {len(splits.test)} test"
        )
        for method in methods:
            load = model_loader(preset.model, task, seed=0)
            lr, trials = _search_lr(method, load, splits, preset, log)
            runs: list[RunResult] = []
            for seed in range(preset.seeds):
                load = model_loader(preset.model, task, seed=seed)
                r = train_run(
                    load,
                    method,
                    splits.train,
                    splits.test,
                    lr or 0.0,
                    preset.settings,
                    seed=seed,
                    desc=f"{method.name} seed {seed}",
                    with_ranks=seed == 0,
                )
                runs.append(r)
                log(
                    f"  {method.label:<14} seed {seed}: test accuracy {r.accuracy:.3f}"
                    f" ({r.train_seconds:.0f} s)"
                )
            entry = results["methods"][method.name]
            entry.update(
                adapter_params=runs[0].adapter_params,
                head_params=runs[0].head_params,
                trainable_params=runs[0].adapter_params + runs[0].head_params,
                base_params=runs[0].base_params,
            )
            entry["tasks"][task_name] = {
                "lr": lr,
                "lr_search": trials,
                "seeds": list(range(preset.seeds)),
                "accuracy": [r.accuracy for r in runs],
                "train_seconds": [r.train_seconds for r in runs],
                "train_memory_mb": [r.train_memory_mb for r in runs],
                "memory_bytes": runs[0].memory,
                "losses": [r.losses for r in runs],
                "ranks": runs[0].ranks,
            }
    results["total_seconds"] = time.perf_counter() - start
    write_reports(results, out)
    return results

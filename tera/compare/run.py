"""``compare``: every method, same model, same splits, same budget; lr chosen on validation.

The protocol, for every task and method:

1. **Learning-rate search on the validation split.** One run per rate of the method's grid,
   each with the *full* training schedule (seed 0), scored on the validation split
   (accuracy, ties broken by the validation loss). Short trials would end at the majority
   class for most rates and reward the largest one; full-length trials cannot be won that
   way. When the best rate sits on the grid's edge, the grid is extended by one point
   beyond it (the report says so).
2. **Seeds.** The seed-0 run at the chosen rate *is* the winning trial (the same seed, rate
   and budget give the same model), evaluated once on the test split; seeds 1, 2, ... are
   trained at that rate. The test split is used for nothing but these numbers.
3. **Everything persists.** Each finished run is written to ``<out>/runs/`` as it
   finishes (the trials with their trained tensors), so :func:`compare` with
   ``resume=True`` continues an interrupted comparison and never redoes a finished run.

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
>>> entry = results["methods"]["tera"]["tasks"]["synthetic"]
>>> set(entry["lr_search"]) >= {"0.03", "0.1", "0.3"}  # TeRA's grid, maybe one more point
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tera import __version__
from tera.compare.data import (
    Example,
    Splits,
    Task,
    load_bigbench_task,
    load_task_file,
    make_splits,
    synthetic_task,
)
from tera.compare.datafile import TASK_FILE_SUFFIXES
from tera.compare.folder import is_model_folder, load_model_folder
from tera.compare.jsonfile import jsonable, write_json
from tera.compare.methods import Method, for_model_kind, method_config, parse_methods
from tera.compare.models import (
    LoadedModel,
    load_minilm_classifier,
    load_smollm2,
    tiny_causal_lm,
    tiny_classifier,
)
from tera.compare.presets import Preset
from tera.compare.train import (
    _ranks,
    evaluate,
    fine_tune,
    load_for_run,
    prepare,
    trainable_state,
)
from tera.compare.workers import check_workers, run_in_processes
from tera.errors import LoadError, TeraError

__all__ = [
    "MODEL_KINDS",
    "ComparisonExistsError",
    "compare",
    "constant_baseline",
    "fit_split_sizes",
    "load_task",
    "model_kind",
    "model_loader",
    "run_unit",
    "saved_preset",
]

MODEL_KINDS: dict[str, str] = {
    "minilm": "classifier",
    "tiny": "classifier",
    "smollm2": "causal_lm",
    "tiny-lm": "causal_lm",
}
"""The bundled models of ``--model`` and their kinds. A classifier gets a new task head; a
causal LM is fine-tuned on ``question -> answer`` text and scored by likelihood. Any local
Hugging Face model folder works too (:mod:`tera.compare.folder`).
"""
_FORMAT = 1
#: Preset fields a resumed comparison may change: each run's record depends on none of them,
#: so adding methods, tasks or seeds to a finished comparison reuses every finished run.
_EXTENSIBLE = frozenset({"methods", "tasks", "seeds", "budget"})


class ComparisonExistsError(TeraError, ValueError):
    """The output folder already holds a comparison (resume it, or overwrite it)."""


def load_task(name: str) -> Task:
    """A task by name: a BIG-bench task, ``synthetic``, or a JSONL/CSV file of your own.

    Examples
    --------
    >>> from tera.compare.run import load_task
    >>> task = load_task("synthetic")
    >>> task.name, len(task.fixed_choices)
    ('synthetic', 4)
    """
    if name == "synthetic":
        return synthetic_task()
    if name.lower().endswith(TASK_FILE_SUFFIXES) or (os.sep in name and Path(name).exists()):
        return load_task_file(name)
    return load_bigbench_task(name)


def model_kind(model: str, kind: str | None = None) -> str:
    """``"classifier"`` or ``"causal_lm"`` for a bundled model name or a model folder."""
    if kind is not None:
        return kind
    if model in MODEL_KINDS:
        return MODEL_KINDS[model]
    if is_model_folder(model):
        from tera.compare.folder import _config, detect_kind

        return detect_kind(_config(Path(model).expanduser()))
    raise LoadError(
        f"unknown model {model!r}; choose from {', '.join(MODEL_KINDS)} or give a local Hugging "
        "Face model folder (config.json, weights and tokenizer)"
    )


def model_loader(
    model: str,
    task: Task,
    seed: int,
    kind: str | None = None,
    targets: Sequence[str] | None = None,
) -> Callable[[], LoadedModel]:
    """A function returning a fresh copy of ``model`` set up for ``task``.

    Examples
    --------
    >>> from tera.compare.run import load_task, model_loader
    >>> loaded = model_loader("tiny", load_task("synthetic"), seed=0)()
    >>> loaded.kind, loaded.model.config.num_labels
    ('classifier', 4)
    """
    n_labels = len(task.fixed_choices or ())
    resolved = model_kind(model, kind)
    if resolved == "classifier" and not n_labels:
        raise LoadError(
            f"task {task.name!r} is multiple choice (its choices vary per example); use a "
            "causal LM (--model smollm2, or a causal LM folder) for it"
        )
    if model not in MODEL_KINDS:
        return partial(load_model_folder, model, n_labels or None, seed, resolved, targets)
    if kind is not None and kind != MODEL_KINDS[model]:
        raise LoadError(f"--kind {kind} does not fit the bundled {model} ({MODEL_KINDS[model]})")
    loaders: dict[str, Callable[[], LoadedModel]] = {
        "minilm": partial(load_minilm_classifier, n_labels, seed),
        "tiny": partial(tiny_classifier, n_labels, seed),
        "smollm2": load_smollm2,
        "tiny-lm": partial(tiny_causal_lm, seed),
    }
    load = loaders[model]
    if targets is None:
        return load
    return partial(_with_targets, load, tuple(targets))


def _with_targets(load: Callable[[], LoadedModel], targets: tuple[str, ...]) -> LoadedModel:
    from tera.compare.folder import find_targets

    loaded = load()
    loaded.target_modules = find_targets(loaded.model, targets)
    return loaded


def fit_split_sizes(
    n_rows: int, n_train: int, n_validation: int, n_test: int
) -> tuple[int, int, int]:
    """Split sizes that fit ``n_rows``: the requested ones, or shrunk in proportion.

    A task with fewer rows than requested keeps the ratio of the requested sizes (test and
    validation at least one example each), so a small file of your own still gets a
    train, a validation and a test split.

    Examples
    --------
    >>> fit_split_sizes(10_000, 2000, 200, 800)
    (2000, 200, 800)
    >>> fit_split_sizes(100, 2000, 200, 800)
    (68, 6, 26)
    """
    total = n_train + n_validation + n_test
    if total <= n_rows:
        return n_train, n_validation, n_test
    if n_rows < 3:
        raise LoadError(f"a task needs at least 3 rows (train, validation, test), got {n_rows}")
    test = max(1, math.floor(n_rows * n_test / total))
    validation = max(1, math.floor(n_rows * n_validation / total))
    return n_rows - test - validation, validation, test


def _answer_key(example: Example, fixed: bool) -> Any:
    return example.answer if fixed else example.label


def constant_baseline(train: Sequence[Example], evaluation: Sequence[Example]) -> float:
    """Accuracy on ``evaluation`` of always giving the training split's most common answer.

    The answer is a label for classification tasks and a choice position for
    multiple-choice ones: the "majority class" a method must beat to have learned anything.

    Examples
    --------
    >>> from tera.compare.data import Example
    >>> tr = [Example("a", ("x", "y"), 0)] * 3 + [Example("b", ("x", "y"), 1)]
    >>> constant_baseline(tr, [Example("c", ("x", "y"), 0), Example("d", ("x", "y"), 1)])
    0.5
    """
    if not train or not evaluation:
        return 0.0
    fixed = all(e.choices == train[0].choices for e in (*train, *evaluation))
    common = Counter(_answer_key(e, fixed) for e in train).most_common(1)[0][0]
    hits = 0
    for e in evaluation:
        answers = {
            _answer_key(Example(e.text, e.choices, i), fixed) for i in (e.label, *e.alternatives)
        }
        hits += common in answers
    return hits / len(evaluation)


# --------------------------------------------------------------------------- run records


def _slug(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:48]
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _preset_dict(preset: Preset) -> dict[str, Any]:
    return jsonable(dataclasses.asdict(preset))  # type: ignore[no-any-return]


def _lr_text(lr: float) -> str:
    return f"{lr:g}"


class _Runner:
    """Runs (or reads back) each run of a comparison; one record file per finished run."""

    def __init__(
        self,
        preset: Preset,
        out: Path,
        log: Callable[[str], None],
        on_run: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.preset, self.out, self.log, self.on_run = preset, out, log, on_run
        self.settings = preset.settings
        self.done = 0
        self.reused = 0
        self.run_seconds = 0.0  # wall time of every run this comparison uses, reused or not
        self.configs: dict[str, Any] = {}  # method -> its adapter config, as recorded

    def _path(self, task: str, method: Method, purpose: str) -> Path:
        return self.out / "runs" / _slug(task) / _slug(method.name) / f"{purpose}.json"

    def record(
        self, task: str, method: Method, purpose: str, run: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        path = self._path(task, method, purpose)
        config = self.configs.get(method.name)
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text())
            # a record made with another adapter config (a default changed since, say) is not
            # this method's run: redo it (records written before configs were kept are trusted)
            if "config" not in data or config is None or data["config"] == config:
                self.reused += 1
                self.run_seconds += float(data.get("wall_seconds") or 0)
                return data
            self.log(
                f"  {method.label} {purpose}: recorded with another config "
                f"({_config_change(data['config'], config)}); running it again"
            )
        start = time.perf_counter()
        data = run()
        data.update(
            task=task, method=method.name, purpose=purpose, wall_seconds=time.perf_counter() - start
        )
        if config is not None:
            data["config"] = config
        write_json(path, data)
        self.done += 1
        self.run_seconds += data["wall_seconds"]
        if self.on_run is not None:
            self.on_run(data)
        return data

    def state_path(self, task: str, method: Method, lr: float) -> Path:
        return self._path(task, method, f"trial-lr={_lr_text(lr)}").with_suffix(".safetensors")

    # -- one run -------------------------------------------------------------------------
    def _load(self, load: Callable[[], LoadedModel]) -> LoadedModel:
        loaded = load_for_run(load, self.settings)
        if self.preset.quantize is not None:
            from tera.adapters import quantize_model

            quantize_model(loaded.model, self.preset.quantize)  # type: ignore[arg-type]
        return loaded

    def _train(
        self,
        load: Callable[[], LoadedModel],
        method: Method,
        splits: Splits,
        lr: float,
        seed: int,
        desc: str,
    ) -> tuple[Any, Any, LoadedModel, dict[str, Any]]:
        from tera.adapters import weight_bytes

        torch.manual_seed(seed)
        loaded = self._load(load)
        base_weight_bytes = weight_bytes(loaded.model)  # as stored: quantized bytes count less
        run = fine_tune(loaded, method, splits.train, lr, self.settings, seed, desc)
        info = {
            "lr": lr,
            "seed": seed,
            "losses": run.stats.losses,
            "train_seconds": run.stats.seconds,
            "memory": run.stats.memory,
            "adapter_params": run.adapter_params,
            "head_params": run.head_params,
            "base_params": run.base_params,
            "base_weight_bytes": base_weight_bytes,
        }
        model, adapted = run.model, run.adapted
        return model, adapted, loaded, info

    def trial(
        self, task: str, load: Callable[[], LoadedModel], method: Method, splits: Splits, lr: float
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            desc = f"{method.label} lr={_lr_text(lr)}"
            model, _, loaded, info = self._train(load, method, splits, lr, 0, desc)
            result = evaluate(model, loaded, splits.validation, self.settings, f"{desc} val")
            state = self.state_path(task, method, lr)
            state.parent.mkdir(parents=True, exist_ok=True)
            tmp = state.parent / f".{state.name}.{uuid.uuid4().hex}.tmp"
            save_file(trainable_state(model), str(tmp))
            os.replace(tmp, state)
            info["validation"] = dataclasses.asdict(result)
            self.log(
                f"  {method.label:<18} lr={_lr_text(lr):<8} validation accuracy "
                f"{result.accuracy:.3f} (loss {result.loss:.3f}, {info['train_seconds']:.0f} s)"
            )
            return info

        return self.record(task, method, f"trial-lr={_lr_text(lr)}", run)

    def test_from_trial(
        self,
        task: str,
        load: Callable[[], LoadedModel],
        method: Method,
        splits: Splits,
        trial: dict[str, Any],
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            lr = float(trial["lr"])
            loaded = self._load(load)
            model, adapted = prepare(loaded, method, 0)
            state = load_file(str(self.state_path(task, method, lr)))
            wanted = set(trainable_state(model))
            if set(state) != wanted:
                raise LoadError(
                    f"the saved trial of {method.name} at lr={lr:g} holds {sorted(state)[:4]}..., "
                    f"not this model's trainable tensors; delete {self.out / 'runs'} and rerun"
                )
            device = next(model.parameters()).device
            model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
            result = evaluate(model, loaded, splits.test, self.settings, f"{method.label} test")
            info = {k: v for k, v in trial.items() if k not in ("validation", "purpose")}
            info["test"] = dataclasses.asdict(result)
            info["ranks"] = _ranks(adapted)
            self.log(f"  {method.label:<18} seed 0: test accuracy {result.accuracy:.3f}")
            return info

        return self.record(task, method, "test-seed=0", run)

    def test_run(
        self,
        task: str,
        load: Callable[[], LoadedModel],
        method: Method,
        splits: Splits,
        lr: float | None,
        seed: int,
    ) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            desc = f"{method.label} seed {seed}"
            model, adapted, loaded, info = self._train(load, method, splits, lr or 0.0, seed, desc)
            result = evaluate(model, loaded, splits.test, self.settings, f"{desc} test")
            info["test"] = dataclasses.asdict(result)
            info["ranks"] = _ranks(adapted) if seed == 0 else {}
            self.log(
                f"  {method.label:<18} seed {seed}: test accuracy {result.accuracy:.3f}"
                f" ({info['train_seconds']:.0f} s)"
            )
            return info

        purpose = "zero-shot" if not method.trains else f"test-seed={seed}"
        return self.record(task, method, purpose, run)


def _pick(trials: dict[float, dict[str, Any]]) -> float:
    """Best validation accuracy; ties go to the lower validation loss, then the lower rate."""

    def key(lr: float) -> tuple[float, float, float]:
        v = trials[lr]["validation"]
        loss = v["loss"] if v["loss"] is not None and math.isfinite(v["loss"]) else math.inf
        return (v["accuracy"], -loss, -lr)

    return max(trials, key=key)


def _beyond(grid: list[float], best: float) -> float:
    ratio = grid[1] / grid[0] if len(grid) > 1 else 3.0
    beyond = best * ratio if best == grid[-1] else best / ratio
    return float(f"{beyond:.1g}")  # 0.1 / 3 -> 0.03: a rate one would write


def _search(
    runner: _Runner,
    task: str,
    load: Callable[[], LoadedModel],
    method: Method,
    splits: Splits,
) -> tuple[float, dict[float, dict[str, Any]], float | None]:
    grid = sorted(method.lr_grid)
    trials = {lr: runner.trial(task, load, method, splits, lr) for lr in grid}
    best = _pick(trials)
    extended = None
    if best in (grid[0], grid[-1]):
        extended = _beyond(grid, best)
        runner.log(
            f"  {method.label:<18} best rate {best:g} on the grid's edge: trying {extended:g}"
        )
        trials[extended] = runner.trial(task, load, method, splits, extended)
        best = _pick(trials)
    return best, trials, extended


def _prepare_out(out: Path, preset: Preset, resume: bool, overwrite: bool) -> None:
    marker = out / "compare.json"
    saved = json.loads(marker.read_text()) if marker.is_file() else None
    if saved is not None and not resume:
        if not overwrite:
            raise ComparisonExistsError(
                f"{out} already holds a comparison; continue it with `tera compare --resume "
                f"{out}`, start it again with --overwrite, or choose another --out"
            )
        shutil.rmtree(out / "runs", ignore_errors=True)
        saved = None
    if saved is not None:
        mine = _preset_dict(preset)
        keys = set(mine) | set(saved["preset"])
        differ = sorted(k for k in keys if mine.get(k) != saved["preset"].get(k))
        fixed = [k for k in differ if k not in _EXTENSIBLE]
        if fixed:
            raise ComparisonExistsError(
                f"{out} holds a comparison with other settings ({', '.join(fixed)} differ); "
                "resume it as it was configured (`tera compare --resume DIR` with no other "
                "options) or start a new one in another --out"
            )
        if differ:  # more methods, tasks or seeds: the finished runs stay valid
            write_json(marker, {"format": _FORMAT, "preset": mine})
    if resume and saved is None and not (out / "runs").exists():
        raise ComparisonExistsError(f"nothing to resume in {out}: it holds no comparison")
    out.mkdir(parents=True, exist_ok=True)
    if saved is None:
        write_json(marker, {"format": _FORMAT, "preset": _preset_dict(preset)})


def saved_preset(out: str | Path) -> Preset:
    """The preset of the comparison saved in ``out`` (what ``--resume`` continues)."""
    from tera.compare.presets import preset_from_dict

    marker = Path(out) / "compare.json"
    if not marker.is_file():
        raise ComparisonExistsError(f"nothing to resume in {out}: no compare.json in it")
    data = json.loads(marker.read_text())
    if data.get("format") != _FORMAT:
        raise ComparisonExistsError(
            f"{marker} was written by another tera (format {data.get('format')})"
        )
    return preset_from_dict(data["preset"])


def _config_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The fields two recorded configs differ in, ``name: old -> new``."""
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )


def _recorded_config(config: Any) -> dict[str, Any]:
    """An adapter config as run records keep it: JSON values, without the per-run seed."""
    data = json.loads(json.dumps(jsonable(config.to_dict())))
    data.pop("seed", None)
    return data  # type: ignore[no-any-return]


def _check_methods(
    methods: list[Method], load: Callable[[], LoadedModel], log: Callable[[str], None]
) -> tuple[list[Method], dict[str, Any]]:
    """Size every ``r=match`` and build every method's config on the model, before training.

    Returns the methods with their ranks sized (:func:`~tera.compare.matching.match_ranks`)
    and each one's config as its run records keep it (:func:`_recorded_config`).
    """
    from tera.adapters import parameter_report
    from tera.compare.matching import match_ranks, target_out_sizes

    configs: dict[str, Any] = {}
    loaded = load()
    targets = loaded.target_modules
    out_sizes = target_out_sizes(loaded.model, targets)
    try:
        methods = match_ranks(methods, loaded.model, targets)
    except TeraError as err:
        raise type(err)(f"sizing r=match: {err}") from None
    for method in methods:
        if method.kind == "head":
            continue
        config = method_config(method, targets, out_sizes)
        try:
            report = parameter_report(loaded.model, config)  # type: ignore[arg-type]
        except TeraError as err:
            raise type(err)(f"method {method.name}: {err}") from None
        log(f"  {method.label:<18} {report.adapter:>10,d} adapter parameters")
        configs[method.name] = _recorded_config(config)
    return methods, configs


def _method_entry(m: Method) -> dict[str, Any]:
    """A method's entry of ``results.json`` before its tasks run."""
    entry: dict[str, Any] = {
        "label": m.label,
        "kind": m.kind,
        "spec_fields": dict(m.fields),
        "description": m.description,
        "lr_grid": list(m.lr_grid),
        "trains": m.trains,
        "tasks": {},
    }
    if m.matched:
        entry["matched"] = dict(m.matched)
    return entry


def compare(
    preset: Preset,
    out: str | Path,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
    on_run: Callable[[dict[str, Any]], None] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run the comparison described by ``preset`` and write the reports to ``out``.

    The protocol is the module's: a full-schedule learning-rate search per method on the
    validation split (extended by one point when the best rate is on the grid's edge), the
    chosen rate trained with ``preset.seeds`` seeds and scored on the test split, which
    nothing else looks at. On a causal LM ``head`` is the zero-shot baseline
    (:data:`~tera.compare.methods.ZERO_SHOT`): evaluated once, never trained.

    Parameters
    ----------
    preset : Preset
        Model, tasks, methods, split sizes, seeds and budget
        (:data:`~tera.compare.presets.PRESETS`).
    out : str or Path
        Folder of the runs and reports (created): ``compare.json`` (the preset),
        ``runs/`` (one record per finished run), ``results.json``, ``results.md``, plots.
    log : callable
        Receives one line per trial and run (``print`` by default).
    resume : bool
        Continue the comparison saved in ``out``: finished runs are read back, never redone.
        ``preset`` must equal the saved one except for ``methods``, ``tasks`` and ``seeds``
        (more of them extend the comparison; every finished run stays valid).
    overwrite : bool
        Discard a comparison saved in ``out`` and start again.
    on_run : callable, optional
        Called with each run's record right after it is written.
    workers : int
        With more than 1, the (task, method) units run first in that many processes
        (spawned, each with an equal share of this process's torch threads;
        :func:`~tera.compare.run.run_unit`), then this process reads their records back and
        writes the reports. The records, hence the results, are the ones a single process
        writes with the same number of threads per run; ``on_run`` sees only the runs of
        this process.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    ComparisonExistsError
        If ``out`` holds a comparison and neither ``resume`` nor ``overwrite`` is set, or
        ``resume`` is set and the saved preset differs.
    """
    from tera.compare.report import write_reports

    out = Path(out)
    kind = model_kind(preset.model, preset.kind)
    methods = [for_model_kind(m, kind) for m in parse_methods(preset.methods)]
    check_workers(workers)  # before anything is written
    _prepare_out(out, preset, resume, overwrite)
    runner = _Runner(preset, out, log, on_run)
    start = time.perf_counter()
    before = 0.0  # wall time of the earlier sessions of a resumed comparison
    if resume and (out / "results.json").is_file():
        before = float(json.loads((out / "results.json").read_text()).get("total_seconds") or 0)
    results: dict[str, Any] = {
        "tera_version": __version__,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "preset": _preset_dict(preset),
        "settings": dataclasses.asdict(preset.settings),
        "model_kind": kind,
        "tasks": {},
        "methods": {m.name: _method_entry(m) for m in methods},
    }
    if workers > 1:
        units = [(preset, str(out), t, m.name) for t in preset.tasks for m in methods]
        log(f"{len(units)} (task, method) units over {min(workers, len(units))} processes")
        run_in_processes(run_unit, units, workers)
    for index, task_name in enumerate(preset.tasks):
        label, info, splits, loaders = _task_setup(preset, task_name, log)
        results["tasks"][label] = info
        if index == 0:
            methods, runner.configs = _check_methods(methods, loaders[0], log)
            results["methods"] = {m.name: _method_entry(m) for m in methods}
        for method in methods:
            entry = _run_method(runner, label, loaders, method, splits, preset)
            results["methods"][method.name]["tasks"][label] = entry
            first = entry.pop("_counts")
            results["methods"][method.name].update(first)
        results["total_seconds"] = before + time.perf_counter() - start
        write_reports(results, out)  # after every task: a partial report survives a crash
    results["total_seconds"] = before + time.perf_counter() - start
    results["runs_done"], results["runs_reused"] = runner.done, runner.reused
    # the runs' own wall time: what the comparison costs on this machine, however many
    # sessions (or processes sharing out its runs) it took
    results["run_seconds"] = runner.run_seconds
    write_reports(results, out)
    return results


def _task_setup(
    preset: Preset, task_name: str, log: Callable[[str], None]
) -> tuple[str, dict[str, Any], Splits, dict[int, Callable[[], LoadedModel]]]:
    """A task's report name, ``results.json`` entry, splits and model loader per seed."""
    task = load_task(task_name)
    sizes = fit_split_sizes(len(task), preset.n_train, preset.n_validation, preset.n_test)
    n_train, n_validation, n_test = sizes
    splits = make_splits(task, n_train, n_validation, n_test, seed=0)
    label = task.name if task_name == task.name else task_name
    info = {
        "name": task.name,
        "rows": len(task),
        "n_train": len(splits.train),
        "n_validation": len(splits.validation),
        "n_test": len(splits.test),
        "majority_accuracy": constant_baseline(splits.train, splits.test),
        "validation_majority_accuracy": constant_baseline(splits.train, splits.validation),
        "task_majority_accuracy": task.majority_accuracy,
    }
    shrunk = (
        ""
        if sum(sizes) == preset.n_train + preset.n_validation + preset.n_test
        else (" (the task is smaller than the preset's splits: shrunk in proportion)")
    )
    log(
        f"{label}: {len(task)} rows; {len(splits.train)} train / {len(splits.validation)} "
        f"validation / {len(splits.test)} test{shrunk}"
    )
    loaders = {
        s: model_loader(preset.model, task, s, preset.kind, preset.targets)
        for s in range(max(preset.seeds, 1))
    }
    return label, info, splits, loaders


def run_unit(preset: Preset, out: str, task_name: str, method_name: str) -> None:
    """Run one (task, method) of a comparison: its trials and seeds, recorded in ``out/runs``.

    What each process of :func:`compare` with ``workers > 1`` does; the records are the
    ones the whole comparison would write (they depend only on the task, the method, the
    rate and the seed), which :func:`compare` then reads back. No report is written and no
    progress bar drawn; each log line is printed with the unit's name.
    """
    tag = f"[{task_name} | {method_name}]"

    def log(line: str) -> None:
        print(f"{tag} {line.strip()}", flush=True)

    preset = dataclasses.replace(
        preset, settings=dataclasses.replace(preset.settings, progress=False)
    )
    kind = model_kind(preset.model, preset.kind)
    method = for_model_kind(parse_methods([method_name])[0], kind)
    label, _, splits, loaders = _task_setup(preset, task_name, lambda line: None)
    methods, configs = _check_methods([method], loaders[0], lambda line: None)
    runner = _Runner(preset, Path(out), log, None)
    runner.configs = configs
    _run_method(runner, label, loaders, methods[0], splits, preset)


def _run_method(
    runner: _Runner,
    task: str,
    loaders: dict[int, Callable[[], LoadedModel]],
    method: Method,
    splits: Splits,
    preset: Preset,
) -> dict[str, Any]:
    seeds = list(range(max(preset.seeds, 1)))
    trials: dict[float, dict[str, Any]] = {}
    extended = None
    if not method.trains:
        once = runner.test_run(task, loaders[0], method, splits, None, 0)
        runs = [once for _ in seeds]  # deterministic: evaluated once, the same for every seed
        lr = None
    elif len(method.lr_grid) == 1:
        lr = method.lr_grid[0]
        runs = [runner.test_run(task, loaders[s], method, splits, lr, s) for s in seeds]
    else:
        lr, trials, extended = _search(runner, task, loaders[0], method, splits)
        runs = [runner.test_from_trial(task, loaders[0], method, splits, trials[lr])]
        runs += [runner.test_run(task, loaders[s], method, splits, lr, s) for s in seeds[1:]]
    first = runs[0]
    entry: dict[str, Any] = {
        "lr": lr,
        "lr_search": {_lr_text(k): v["validation"]["accuracy"] for k, v in sorted(trials.items())},
        "lr_search_loss": {_lr_text(k): v["validation"]["loss"] for k, v in sorted(trials.items())},
        "lr_extended": extended,
        "seeds": seeds,
        "accuracy": [r["test"]["accuracy"] for r in runs],
        "test_loss": [r["test"]["loss"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "train_memory_mb": [sum(r["memory"].values()) / 2**20 for r in runs],
        "memory_bytes": first["memory"],
        "losses": [r["losses"] for r in runs],
        "ranks": first.get("ranks", {}),
        "_counts": {
            "adapter_params": first["adapter_params"],
            "head_params": first["head_params"],
            "trainable_params": first["adapter_params"] + first["head_params"],
            "base_params": first["base_params"],
            "base_weight_bytes": first.get("base_weight_bytes"),
        },
    }
    return entry

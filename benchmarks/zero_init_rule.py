r"""The zero_init decision: which d of TeRA starts at zero, chosen by a rule stated in advance.

The rule (docs/tera-science.md, "The zero_init decision", states it before any number):

* Candidates: ``zero_init=-1`` (today's default, the last output mode) and ``zero_init=0``
  (the input vector).
* Evidence: at least 3 tasks, one of them on the decoder LM (SmolLM2-135M); on each task
  each candidate at its own learning rate, the one its harness comparison chose on the
  validation split; 5 training seeds (0..4) per candidate and task, each run scored on the
  VALIDATION split (test is never read).
* Decision: the difference ``zero_init=0`` minus the default, paired over the (task, seed)
  runs. Switch the default to ``zero_init=0`` only if the mean difference is positive and
  its 95% paired-t interval excludes zero; otherwise the default stays (a change needs
  evidence, keeping it does not). The same reversed would make no change either way.

Each run is kept in ``<out>/runs.json`` as it finishes (a rerun skips it).

    python benchmarks/zero_init_rule.py \\
        --task multiemo/all_sentence_en=minilm:benchmarks/results/ablations \\
        --task fact_checker/fever=minilm:benchmarks/results/ablations \\
        --task strategyqa=smollm2:docs/results/compare-paper-small

``TASK=MODEL:FOLDER``: the task, the bundled model, and the comparison whose chosen learning
rates (``tera`` and ``tera(zero_init=0)``) to use, whose preset gives the budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

CANDIDATES = ("tera", "tera(zero_init=0)")
OUT = Path("benchmarks/results/zero-init")


def _runs_path(out: Path) -> Path:
    return out / "runs.json"


def _load(out: Path) -> dict[str, Any]:
    path = _runs_path(out)
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def _save(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = _runs_path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(_runs_path(out))


def validation_run(folder: Path, task_name: str, key: str, seed: int) -> dict[str, Any]:
    """Train ``key`` at the rate ``folder``'s comparison chose, score it on validation."""
    from tera.compare.data import make_splits
    from tera.compare.methods import parse_method
    from tera.compare.run import fit_split_sizes, load_task, model_loader, saved_preset
    from tera.compare.train import evaluate, fine_tune, load_for_run

    preset = saved_preset(folder)
    results = json.loads((folder / "results.json").read_text())
    entry = results["methods"][key]["tasks"][task_name]
    lr = float(entry["lr"])
    if seed == 0:  # the learning-rate trial at the chosen rate is this very run
        return {"lr": lr, "accuracy": float(entry["lr_search"][f"{lr:g}"]), "reused": True}
    task = load_task(task_name)
    sizes = fit_split_sizes(len(task), preset.n_train, preset.n_validation, preset.n_test)
    splits = make_splits(task, *sizes, seed=0)
    settings = preset.settings
    torch.manual_seed(seed)
    loaded = load_for_run(model_loader(preset.model, task, seed, preset.kind), settings)
    run = fine_tune(loaded, parse_method(key), splits.train, lr, settings, seed, key)
    ev = evaluate(run.model, loaded, splits.validation, settings, f"{key} val")
    return {"lr": lr, "accuracy": ev.accuracy, "loss": ev.loss, "seconds": run.stats.seconds}


def decision(data: dict[str, Any], seeds: int) -> tuple[str, str]:
    """The table of validation accuracies and the rule's decision (Markdown)."""
    from tera.compare.report import difference_text, paired_test

    runs = data["runs"]
    tasks = sorted({r["task"] for r in runs.values()})
    lines = [
        "<!-- written by benchmarks/zero_init_rule.py: do not edit -->",
        "",
        "Validation accuracy (%), mean over seeds (n = seeds done), each candidate at its own "
        "chosen rate. Δ (zero_init=0 - default): paired over (task, seed).",
        "",
        "| Task | default (zero_init=-1) | zero_init=0 | n | Δ (zero_init=0 - default) |",
        "|---|---|---|---|---|",
    ]
    pairs = []
    for task in tasks:
        acc = {
            k: {
                r["seed"]: r["accuracy"]
                for r in runs.values()
                if r["task"] == task and r["key"] == k
            }
            for k in CANDIDATES
        }
        both = sorted(set(acc[CANDIDATES[0]]) & set(acc[CANDIDATES[1]]))
        task_pairs = [(acc[CANDIDATES[1]][s], acc[CANDIDATES[0]][s]) for s in both]
        pairs += task_pairs
        test = paired_test(task_pairs)
        cells = [
            task,
            *(
                f"{100 * statistics.fmean(acc[k].values()):.2f}" if acc[k] else "-"
                for k in CANDIDATES
            ),
            str(len(both)),
            "-" if test["low"] is None else difference_text(test),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    test = paired_test(pairs)
    complete = len(tasks) >= 3 and all(
        sum(1 for r in runs.values() if r["task"] == t and r["key"] == k) >= seeds
        for t in tasks
        for k in CANDIDATES
    )
    decoder = any(r.get("model") == "smollm2" for r in runs.values())
    if not (complete and decoder):
        verdict = (
            "**Evidence incomplete** (the rule needs >= 3 tasks including the decoder LM, "
            f"{seeds} seeds each): the default stays."
        )
    elif test["low"] is not None and float(test["low"]) > 0:
        verdict = f"**Switch to zero_init=0**: Δ = {difference_text(test)} over {test['n']} pairs."
    else:
        shown = difference_text(test) if test["low"] is not None else "-"
        verdict = (
            f"**Keep zero_init=-1**: Δ = {shown}"
            f" over {test['n']} pairs; the interval does not exclude zero in favour of a change."
        )
    return "\n".join(lines) + "\n", verdict


def main(argv: list[str] | None = None) -> int:
    """Run the missing validation runs, then write ``zero_init.md`` with the decision."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", default=[], metavar="TASK=MODEL:FOLDER")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = _load(args.out)
    for item in args.task:
        task, _, rest = item.partition("=")
        model, _, folder = rest.partition(":")
        for seed in range(args.seeds):
            for key in CANDIDATES:
                name = f"{task}|{key}|{seed}"
                if name in data["runs"]:
                    continue
                run = validation_run(Path(folder), task, key, seed)
                run.update(task=task, key=key, seed=seed, model=model)
                data["runs"][name] = run
                _save(args.out, data)
                print(f"  {task} {key} seed {seed}: validation {run['accuracy']:.3f}", flush=True)
    table, verdict = decision(data, args.seeds)
    (args.out / "zero_init.md").write_text(table + "\n" + verdict + "\n")
    print(table + "\n" + verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())

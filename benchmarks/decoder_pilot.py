"""Where does SmolLM2-135M leave zero-shot? Validation accuracy against training steps.

Before paying for a decoder comparison (``tera compare --preset paper-small``), find tasks
and a step budget at which trained methods leave the zero-shot baseline, on the VALIDATION
split only (the harness's own split of each task: the same ``make_splits`` call, so the test
split is never looked at). Each (task, method) is one run of ``--steps`` steps with the
harness's schedule (warm-up, linear decay to the last step) and batch, scored on the
validation split at each checkpoint; zero-shot is the untrained model on the same split.
A checkpoint inside a longer schedule is not a shorter run (its rate has not decayed), so
the curve shows where learning starts, and the budget is then confirmed by the harness's
own learning-rate search.

    python benchmarks/decoder_pilot.py --tasks strategyqa,winowhy --steps 300
    python benchmarks/decoder_pilot.py --tables-only   # rewrite pilot.md and the plot

Each finished (task, method) curve is kept in ``<out>/pilot.json``: a rerun skips it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from tera.compare.data import make_splits
from tera.compare.methods import for_model_kind, parse_method
from tera.compare.presets import PRESETS
from tera.compare.run import constant_baseline, fit_split_sizes, load_task, model_loader
from tera.compare.train import (
    _batches,
    _lm_loss,
    _schedule,
    evaluate,
    load_for_run,
    prepare,
)

OUT = Path("benchmarks/results/decoder-pilot")


def _save(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "pilot.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out / "pilot.json")


def curve(
    task_name: str,
    spec: str,
    steps: int,
    checkpoints: list[int],
    preset_name: str,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Validation accuracy of ``spec`` (one lr) at each checkpoint of one run."""
    preset = PRESETS[preset_name].with_overrides(model=model_name)
    settings = replace(preset.settings, steps=steps, progress=False)
    task = load_task(task_name)
    sizes = fit_split_sizes(len(task), preset.n_train, preset.n_validation, preset.n_test)
    splits = make_splits(task, *sizes, seed=0)
    method = parse_method(spec)
    loaded = load_for_run(model_loader(preset.model, task, 0), settings)
    method = for_model_kind(method, loaded.kind)
    if method.to_match:
        from tera.compare.matching import match_ranks

        method = match_ranks([method], loaded.model, loaded.target_modules)[0]
    points: dict[str, float] = {}
    if not method.trains:
        ev = evaluate(loaded.model, loaded, splits.validation, settings, "zero-shot")
        return {"label": "Zero-shot", "points": {"0": ev.accuracy}, "loss": {"0": ev.loss}}
    (lr,) = method.lr_grid
    torch.manual_seed(0)
    model, adapted = prepare(loaded, method, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, settings))
    data = _batches(splits.train, settings.batch_size, torch.Generator().manual_seed(0))
    losses, val_loss = [], {}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        loss = _lm_loss(model, loaded, next(data), settings.max_length)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if math.isnan(losses[-1]):
            break
        if step in checkpoints:
            ev = evaluate(model, loaded, splits.validation, settings, "val")
            points[str(step)], val_loss[str(step)] = ev.accuracy, ev.loss
            print(
                f"  {task_name} {method.label} step {step}: validation {ev.accuracy:.3f} "
                f"(loss {ev.loss:.3f}, train loss {statistics.fmean(losses[-20:]):.3f}, "
                f"{time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return {
        "label": method.label,
        "lr": lr,
        "adapter_params": adapted.parameter_report().adapter if adapted is not None else 0,
        "points": points,
        "loss": val_loss,
        "train_losses": losses,
        "seconds": time.perf_counter() - start,
        "n_validation": len(splits.validation),
        "validation_majority": constant_baseline(splits.train, splits.validation),
        "settings": asdict(settings),
    }


def table(data: dict[str, Any]) -> str:
    """Markdown: validation accuracy (%) at each checkpoint, per task and method."""
    lines = [
        "<!-- written by benchmarks/decoder_pilot.py from pilot.json: do not edit -->",
        "",
        "SmolLM2-135M, validation split only (the harness's split of each task), one run per "
        "method of the full schedule, scored at each checkpoint (%). Majority: always the "
        "training split's most common answer position. s: the run's wall seconds on a "
        "shared machine (not a timing).",
        "",
    ]
    for task, runs in data["tasks"].items():
        steps = sorted({int(s) for r in runs.values() for s in r["points"] if s != "0"})
        header = ["Method", "lr", *(f"step {s}" for s in steps), "s"]
        lines += [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        majority = next(
            (r["validation_majority"] for r in runs.values() if "validation_majority" in r), None
        )
        for r in runs.values():
            if r["label"] == "Zero-shot":
                cells = ["Zero-shot", "-", *([f"{100 * r['points']['0']:.1f}"] * len(steps)), "-"]
            else:
                cells = [r["label"], f"{r['lr']:g}"]
                cells += [
                    f"{100 * r['points'][str(s)]:.1f}" if str(s) in r["points"] else "-"
                    for s in steps
                ]
                cells.append(f"{r['seconds']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        if majority is not None:
            cells = ["Majority", "-", *([f"{100 * majority:.1f}"] * len(steps)), "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """``pilot.png``: validation accuracy against steps, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(data["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = data["tasks"][task]
        for r in runs.values():
            if r["label"] == "Zero-shot":
                ax.axhline(100 * r["points"]["0"], color="k", ls="--", label="zero-shot")
                continue
            xs = sorted(int(s) for s in r["points"])
            ax.plot(xs, [100 * r["points"][str(s)] for s in xs], marker="o", label=f"{r['label']}")
        majority = next(
            (r["validation_majority"] for r in runs.values() if "validation_majority" in r), None
        )
        if majority is not None:
            ax.axhline(100 * majority, color="grey", ls=":", label="majority")
        ax.set_xlabel("training steps (batch 4)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: validation accuracy during training (one run each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the missing curves, then write ``pilot.md`` and ``pilot.png``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="strategyqa,winowhy")
    parser.add_argument("--methods", default="head,tera(lr=0.1),lora(r=match,lr=3e-3)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoints", default="25,50,100,200,300")
    parser.add_argument("--preset", default="paper-small")
    parser.add_argument("--model", help="override the preset's model (tiny-lm: a test)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    from tera.compare.methods import split_specs

    path = args.out / "pilot.json"
    data = json.loads(path.read_text()) if path.is_file() else {"tasks": {}}
    if not args.tables_only:
        checkpoints = [int(c) for c in args.checkpoints.split(",")]
        for task in [t.strip() for t in args.tasks.split(",")]:
            for spec in split_specs(args.methods):
                key = "".join(spec.split())
                done = data["tasks"].get(task, {}).get(key)
                if done is not None and done.get("steps", args.steps) == args.steps:
                    continue
                result = curve(task, spec, args.steps, checkpoints, args.preset, args.model)
                result["steps"] = args.steps
                data["tasks"].setdefault(task, {})[key] = result
                _save(args.out, data)
                (args.out / "pilot.md").write_text(table(data))
                plot(data, args.out / "pilot.png")
    (args.out / "pilot.md").write_text(table(data))
    plot(data, args.out / "pilot.png")
    print((args.out / "pilot.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The science scripts of issue 23: the rank-regime tables, the zero_init rule, the pilot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import decoder_pilot
import rank_regime
import zero_init_rule


def _entry(kind: str, params: int, accs: dict[str, list[float]], rank: int) -> dict:
    return {
        "label": kind,
        "kind": kind,
        "adapter_params": params,
        "tasks": {
            t: {
                "seeds": list(range(len(a))),
                "accuracy": a,
                "lr": 0.1,
                "lr_search": {"0.1": 0.5},
                "ranks": {"q": rank, "v": rank},
            }
            for t, a in accs.items()
        },
    }


def _results(methods: dict) -> dict:
    return {
        "preset": {"model": "minilm", "n_train": 1, "n_validation": 1, "n_test": 1},
        "settings": {"steps": 100, "batch_size": 16},
        "tasks": {"a": {}, "b": {}},
        "methods": methods,
    }


def test_rank_regime_merges_only_identical_experiments_and_signs_each_delta():
    here = _results({"vera(r=24)": _entry("vera", 4896, {"a": [0.7] * 3, "b": [0.6] * 3}, 24)})
    reused = _results(
        {
            "tera": _entry("tera", 4872, {"a": [0.6, 0.61, 0.62], "b": [0.5] * 3}, 384),
            "tera-iden": _entry("tera", 4872, {"a": [0.1] * 3}, 384),  # not in REUSED
        }
    )
    merged = rank_regime.merged(here, reused)
    assert set(merged["methods"]) == {"vera(r=24)", "tera"}
    assert merged["methods"]["tera"]["source"] == "ablations"
    table = rank_regime.rank_table(merged)
    row = next(line for line in table.splitlines() if line.startswith("| `vera(r=24)`"))
    # VeRA is 9.0 points above TeRA on a and 10.0 on b: row minus TeRA is positive
    assert "| 4,896 | 1.00 | 24 | 0.0625 |" in row and "| +9.50 [" in row
    assert "| `tera`* |" in table  # reused rows are marked
    pairs = rank_regime.peer_pairs(merged)
    assert "| -9.00 [" in pairs and "| -10.00 [" in pairs  # TeRA minus VeRA: negative
    reused["preset"]["n_train"] = 2
    with pytest.raises(SystemExit, match="n_train"):
        rank_regime.merged(here, reused)


def _rule_runs(diffs: dict[str, list[float]], model: str = "smollm2") -> dict:
    runs = {}
    for task, ds in diffs.items():
        for seed, d in enumerate(ds):
            for key, acc in (("tera", 0.6), ("tera(zero_init=0)", 0.6 + d)):
                runs[f"{task}|{key}|{seed}"] = {
                    "task": task,
                    "key": key,
                    "seed": seed,
                    "accuracy": acc,
                    "model": model if task == "c" else "minilm",
                }
    return {"runs": runs}


def test_zero_init_rule_switches_only_on_complete_evidence_above_zero():
    up = [0.02, 0.03, 0.025, 0.02, 0.03]
    _, verdict = zero_init_rule.decision(_rule_runs({"a": up, "b": up, "c": up}), seeds=5)
    assert verdict.startswith("**Switch to zero_init=0**")
    noisy = [0.05, -0.04, 0.03, -0.03, 0.0]
    _, verdict = zero_init_rule.decision(_rule_runs({"a": noisy, "b": noisy, "c": up}), 5)
    assert verdict.startswith("**Keep zero_init=-1**")
    _, verdict = zero_init_rule.decision(_rule_runs({"a": up, "b": up}), 5)  # 2 tasks
    assert verdict.startswith("**Evidence incomplete**")
    no_decoder = _rule_runs({"a": up, "b": up, "c": up}, model="minilm")
    assert zero_init_rule.decision(no_decoder, 5)[1].startswith("**Evidence incomplete**")
    short = _rule_runs({"a": up[:4], "b": up, "c": up})  # 4 seeds on one task
    assert zero_init_rule.decision(short, 5)[1].startswith("**Evidence incomplete**")


def test_decoder_pilot_table_shows_every_checkpoint_and_the_floors(tmp_path):
    data = {
        "tasks": {
            "t": {
                "head": {"label": "Zero-shot", "points": {"0": 0.5}},
                "tera(lr=0.1)": {
                    "label": "TeRA (lr=0.1)",
                    "lr": 0.1,
                    "points": {"50": 0.55, "100": 0.6},
                    "seconds": 12.0,
                    "validation_majority": 0.52,
                },
            }
        }
    }
    text = decoder_pilot.table(data)
    assert "| Method | lr | step 50 | step 100 | s |" in text
    assert "| Zero-shot | - | 50.0 | 50.0 | - |" in text
    assert "| TeRA (lr=0.1) | 0.1 | 55.0 | 60.0 | 12 |" in text
    assert "| Majority | - | 52.0 | 52.0 | - |" in text
    decoder_pilot.plot(data, tmp_path / "pilot.png")
    assert (tmp_path / "pilot.png").stat().st_size > 1000

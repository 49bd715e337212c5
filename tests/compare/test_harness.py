"""The comparison harness end to end (smoke preset) and the CLI."""

import itertools
import json

import pytest
import torch

from tera.adapters import TeRAConfig, adapt
from tera.cli import main
from tera.compare.methods import METHODS, ZERO_SHOT, for_model_kind, method_config, parse_methods
from tera.compare.plots import rank_plot
from tera.compare.report import (
    MIN_PAIRS,
    markdown_table,
    p_value_cell,
    paired_accuracies,
    summary_line,
    wilcoxon_vs_tera,
)
from tests.adapters.common import llama, randomize_adapter


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["compare", "--preset", "smoke", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_smoke_writes_every_report(smoke):
    out, results = smoke
    for name in (
        "results.json",
        "results.md",
        "accuracy_vs_params.png",
        "ranks.png",
        "loss_curves.png",
    ):
        assert (out / name).stat().st_size > 0
    assert set(results["methods"]) == {"tera", "vera", "hira", "hira1", "lora", "head"}
    table = (out / "results.md").read_text()
    for e in results["methods"].values():
        assert e["label"] in table
    assert "| Head params |" in table  # a classifier's methods train a head: shown


def test_smoke_runs_are_fair_and_complete(smoke):
    _, results = smoke
    seeds = results["preset"]["seeds"]
    for name, e in results["methods"].items():
        task = e["tasks"]["synthetic"]
        assert len(task["accuracy"]) == seeds
        assert all(0.0 <= a <= 1.0 for a in task["accuracy"])
        # picked on validation from the method's grid, extended by one point at an edge
        grid = METHODS[name].lr_grid
        assert task["lr"] in (*grid, task["lr_extended"])
        tried = {f"{lr:g}" for lr in grid}
        if task["lr_extended"] is not None:
            assert task["lr_extended"] < min(grid) or task["lr_extended"] > max(grid)
            tried.add(f"{task['lr_extended']:g}")
        assert set(task["lr_search"]) == tried
        assert all(len(losses) == results["settings"]["steps"] for losses in task["losses"])
        assert e["head_params"] > 0  # every method trains the new head
        assert task["seeds"] == list(range(seeds))
        if name == "head":
            assert e["adapter_params"] == 0 and task["ranks"] == {}
            assert e["label"] == "Head only"  # a classifier's head does train
        else:
            assert e["adapter_params"] > 0 and task["ranks"]


def test_smoke_memory_is_what_training_holds(smoke):
    """Train MB counts saved activations, gradients, AdamW state and the adapter's weights."""
    _, results = smoke
    memory = {n: e["tasks"]["synthetic"]["memory_bytes"] for n, e in results["methods"].items()}
    for name, m in memory.items():
        e = results["methods"][name]
        assert m["gradients"] == 4 * e["trainable_params"]  # float32, one gradient each
        assert m["optimizer_state"] == 2 * m["gradients"]  # AdamW: two moments
        assert m["saved_for_backward"] > 0
        mb = e["tasks"]["synthetic"]["train_memory_mb"][0]
        assert mb == pytest.approx(sum(m.values()) / 2**20)
    # head only backpropagates through the head alone; adapters through the whole encoder
    assert memory["head"]["adapter_weights"] == 0
    for name in ("tera", "vera", "lora", "hira"):
        assert memory[name]["saved_for_backward"] > 2 * memory["head"]["saved_for_backward"]
        assert memory[name]["adapter_weights"] > 0
    # VeRA's frozen random matrices (r = 256) outweigh TeRA's small shared factors
    assert memory["vera"]["adapter_weights"] > memory["tera"]["adapter_weights"]
    table = (smoke[0] / "results.md").read_text()
    assert "Train MB" in table and "Peak MB" not in table


def test_smoke_ranks_follow_the_theory(smoke):
    _, results = smoke
    ranks = results["methods"]
    for r in ranks["hira1"]["tasks"]["synthetic"]["ranks"].values():
        assert r > 1  # HiRA's W0 ⊙ (B A) is high rank even at r = 1
    for r in ranks["lora"]["tasks"]["synthetic"]["ranks"].values():
        assert r <= 32


def test_wilcoxon_and_table_edge_cases():
    base = {"tasks": {"t": {"majority_accuracy": 0.5}}, "total_seconds": 1.0}
    entry = lambda accs, label: {  # noqa: E731
        "label": label,
        "adapter_params": 10,
        "head_params": 5,
        "base_params": 1000,
        "tasks": {
            "t": {
                "accuracy": accs,
                "lr": 1e-3,
                "train_seconds": [1.0] * len(accs),
                "train_memory_mb": [1.0] * len(accs),
            }
        },
    }
    same = {
        **base,
        "methods": {"tera": entry([0.5, 0.6], "TeRA"), "vera": entry([0.5, 0.6], "VeRA")},
    }
    assert wilcoxon_vs_tera(same) == {"vera": None}  # too few pairs
    assert p_value_cell(same, "vera") == f"n/a (needs >= {MIN_PAIRS} paired runs)"
    assert wilcoxon_vs_tera({**base, "methods": {"vera": entry([0.5], "VeRA")}}) == {}
    table = markdown_table(same)
    # 95% t-interval of (50, 60): 55 ± 12.706 * 5 = 55 ± 63.53; identical pairs: Δ = 0, p = 1
    assert "| TeRA | 0.9901 | 1.00x | 5 | 55.00 ± 63.53 | 55.00 | - | - | 1 | 1.0 |" in table
    assert (
        "| VeRA | 0.9901 | 1.00x | 5 | 55.00 ± 63.53 | 55.00 | +0.00 [+0.00, +0.00] | 1 | 1 | 1.0 |"
        in table
    )
    assert "Δ (TeRA - row) [95% CI]" in table  # the direction is in the header
    assert "Not parameter-matched" not in table  # equal counts: matched
    assert "best: TeRA 55.00%" in summary_line(same)
    tied = {
        **base,
        "methods": {"tera": entry([0.5, 0.6, 0.7], "TeRA"), "vera": entry([0.5, 0.6, 0.7], "V")},
    }
    assert p_value_cell(tied, "vera") == "n/a (all pairs tied)"


def test_wilcoxon_pairs_by_task_and_seed():
    def method(runs):  # runs: {task: {seed: accuracy}}
        return {
            "label": "m",
            "tasks": {
                t: {"seeds": list(by_seed), "accuracy": list(by_seed.values())}
                for t, by_seed in runs.items()
            },
        }

    tera = {"a": {0: 0.9, 1: 0.8, 2: 0.7}, "b": {0: 0.6, 1: 0.65}}
    # the same runs listed in another seed order, plus a seed TeRA did not run
    vera = {"a": {2: 0.5, 0: 0.85, 1: 0.7, 3: 0.99}, "b": {1: 0.6, 0: 0.62}}
    results = {"methods": {"tera": method(tera), "vera": method(vera)}}
    pairs = paired_accuracies(results, "vera")
    assert pairs == [(0.9, 0.85), (0.8, 0.7), (0.7, 0.5), (0.6, 0.62), (0.65, 0.6)]
    from scipy.stats import wilcoxon

    expected = wilcoxon([a for a, _ in pairs], [b for _, b in pairs], zero_method="zsplit")
    assert wilcoxon_vs_tera(results)["vera"] == pytest.approx(expected.pvalue)
    assert p_value_cell(results, "vera") == f"{expected.pvalue:.3g}"
    # two paired runs only: no p-value however different the accuracies
    two = {"methods": {"tera": method({"a": {0: 0.9, 1: 0.9}}), "vera": method(vera)}}
    assert p_value_cell(two, "vera") == "n/a (needs >= 3 paired runs)"


def test_rank_plot_has_one_panel_per_projection():
    fig = rank_plot({"TeRA": {"l.0.query": 8, "l.1.query": 8, "l.0.value": 8}, "LoRA": {}})
    assert [ax.get_title() for ax in fig.axes] == ["q projection", "v projection"]
    xs, ys = fig.axes[0].get_lines()[0].get_data()
    assert list(xs) == [0, 1] and list(ys) == [8, 8]


def test_method_configs_follow_the_paper():
    assert [m.name for m in parse_methods("tera,head")] == ["tera", "head"]
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("dora")
    cfg = method_config(METHODS["tera"], ["q_proj", "v_proj"], [4096, 1024])
    assert cfg.out_modes == {4096: (8, 8, 8, 8), 1024: (8, 8, 8, 2)}  # Llama-3-8B: 0.0033 %
    assert method_config(METHODS["head"], ["q"], [4]) is None
    assert method_config(METHODS["lora"], ["q"], [4]).r == 32
    assert method_config(METHODS["hira1"], ["q"], [4]).r == 1
    assert method_config(METHODS["vera"], ["q"], [4]).r == 256
    # every grid: three points a factor ~3 apart (centred on the default run's validation best)
    for method in METHODS.values():
        grid = method.lr_grid
        assert len(grid) == 3 and all(2.9 < b / a < 3.4 for a, b in itertools.pairwise(grid))
    assert METHODS["tera"].lr_grid == METHODS["vera"].lr_grid == (3e-2, 1e-1, 3e-1)
    assert for_model_kind(METHODS["head"], "causal_lm") == ZERO_SHOT
    assert not ZERO_SHOT.trains and ZERO_SHOT.lr_grid == ()
    assert for_model_kind(METHODS["tera"], "causal_lm") == METHODS["tera"]
    with pytest.raises(ValueError, match="unknown model kind"):
        for_model_kind(METHODS["head"], "seq2seq")


def test_cli_params_matches_the_paper(capsys):
    assert main(["params", "llama-3-8b"]) == 0
    out = capsys.readouterr().out
    for label, pct in (
        ("TeRA", "0.0033"),
        ("VeRA (r=256)", "0.0022"),
        ("HiRA (r=1)", "0.0053"),
        ("LoRA (r=32)", "0.1695"),
    ):
        assert any(line.startswith(label) and line.endswith(pct) for line in out.splitlines())


def test_cli_params_reads_a_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": 100,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            }
        )
    )
    assert main(["params", str(tmp_path), "--methods", "tera"]) == 0
    assert "TeRA" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="neither a bundled config"):
        main(["params", str(tmp_path / "nope")])


def test_cli_rank(tmp_path, capsys):
    model = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    assert main(["rank", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    expected = {
        n: int(torch.linalg.matrix_rank(l.delta_weight(torch.float64)))
        for n, l in model.adapter_layers.items()
    }
    assert {line.split()[0]: int(line.split()[-1]) for line in lines} == expected
    # measured in float64, TeRA's update is full rank (Theorem 1): q is 32 x 32, v is 16 x 32
    assert set(expected.values()) == {32, 16}


def test_causal_lm_path_scores_choices_by_likelihood(tmp_path):
    """The causal-LM branch (SmolLM2's): train on question -> answer, pick the likeliest choice."""
    from tera.compare.presets import PRESETS
    from tera.compare.run import compare

    preset = PRESETS["smoke"].with_overrides(
        model="tiny-lm", methods=("tera", "lora", "head"), seeds=1
    )
    lines: list[str] = []
    results = compare(preset, tmp_path, log=lines.append)
    for name, e in results["methods"].items():
        task = e["tasks"]["synthetic"]
        assert 0.0 <= task["accuracy"][0] <= 1.0
        assert (len(task["losses"][0]) == 0) == (name == "head")
        assert e["head_params"] == 0
    # no method trains a head: the report leaves out that all-zero column
    report = (tmp_path / "results.md").read_text().splitlines()
    header = next(line for line in report if line.startswith("| Method"))
    assert "Head params" not in header and "synthetic" in header
    assert results["methods"]["tera"]["tasks"]["synthetic"]["ranks"]
    # "head" on a causal LM has nothing to train: it is the zero-shot baseline, evaluated
    # without a learning-rate search or a single step, with 0 trainable parameters
    zero = results["methods"]["head"]
    assert zero["label"] == "Zero-shot" and zero["trains"] is False
    assert zero["trainable_params"] == 0 and zero["adapter_params"] == 0
    task = zero["tasks"]["synthetic"]
    assert task["lr"] is None and task["lr_search"] == {} and task["memory_bytes"] == {}
    assert not [line for line in lines if "Zero-shot" in line and "lr=" in line]
    tera_task = results["methods"]["tera"]["tasks"]["synthetic"]
    trials = 3 + (tera_task["lr_extended"] is not None)  # the grid, and its edge extension
    assert sum("TeRA" in line and "validation accuracy" in line for line in lines) == trials
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Zero-shot |"))
    assert row.endswith("| - | - |")  # no training time, no training memory
    assert "Head only" not in table and "Zero-shot: the pretrained causal LM" in table
    assert "Zero-shot" in (tmp_path / "results.json").read_text()

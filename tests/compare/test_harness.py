"""The comparison harness end to end (smoke preset) and the CLI."""

import json

import pytest
import torch

from tera.adapters import TeRAConfig, adapt
from tera.cli import main
from tera.compare.methods import METHODS, method_config, parse_methods
from tera.compare.report import markdown_table, summary_line, wilcoxon_vs_tera
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


def test_smoke_runs_are_fair_and_complete(smoke):
    _, results = smoke
    seeds = results["preset"]["seeds"]
    for name, e in results["methods"].items():
        task = e["tasks"]["synthetic"]
        assert len(task["accuracy"]) == seeds
        assert all(0.0 <= a <= 1.0 for a in task["accuracy"])
        assert task["lr"] in METHODS[name].lr_grid  # picked on validation from the method's grid
        assert set(task["lr_search"]) == {f"{lr:g}" for lr in METHODS[name].lr_grid}
        assert all(len(losses) == results["settings"]["steps"] for losses in task["losses"])
        assert e["head_params"] > 0  # every method trains the new head
        if name == "head":
            assert e["adapter_params"] == 0 and task["ranks"] == {}
        else:
            assert e["adapter_params"] > 0 and task["ranks"]


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
                "peak_memory_mb": [1.0] * len(accs),
            }
        },
    }
    same = {
        **base,
        "methods": {"tera": entry([0.5, 0.6], "TeRA"), "vera": entry([0.5, 0.6], "VeRA")},
    }
    assert wilcoxon_vs_tera(same) == {"vera": None}  # all differences zero: undefined
    assert wilcoxon_vs_tera({**base, "methods": {"vera": entry([0.5], "VeRA")}}) == {}
    table = markdown_table(same)
    assert "| TeRA | 0.9901 | 5 | 55.00 ± 7.07 | 55.00 | - |" in table
    assert "best: TeRA 55.00%" in summary_line(same)


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
    results = compare(preset, tmp_path, log=lambda _: None)
    for name, e in results["methods"].items():
        task = e["tasks"]["synthetic"]
        assert 0.0 <= task["accuracy"][0] <= 1.0
        # "head" on a causal LM has nothing to train: it is the zero-shot baseline
        assert (len(task["losses"][0]) == 0) == (name == "head")
        assert e["head_params"] == 0
    assert results["methods"]["tera"]["tasks"]["synthetic"]["ranks"]

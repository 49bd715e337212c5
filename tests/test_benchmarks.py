"""The benchmark scripts run end to end (tiny sizes; no timing is asserted, only structure)."""

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import layer_step
import model_step


def test_layer_step_times_every_variant_against_the_base(tmp_path):
    out = tmp_path / "layer.md"
    layer_step.main(["--sizes", "64", "--tokens", "16", "--reps", "1", "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 64 | 16 |")]
    names = [re.split(r"(?<!\\) \| ", row)[2].replace("\\|", "|") for row in rows]
    assert names == layer_step.variant_names(64)
    assert "PEFT HiRA r=32" in names and "TeRA (8,8 | 8,8)" in names
    base_row = re.split(r"(?<!\\) \| ", rows[0])
    assert base_row[4].startswith("1.00")  # the base's ratio to itself


@pytest.mark.parametrize(
    ("name", "weights_saved"), [("TeRA (64 | 4,4,4)", 1), ("HiRA r=32", 1), ("LoRA r=32", 0)]
)
def test_memory_worker_counts_what_backward_keeps(name, weights_saved):
    """TeRA keeps W0 + dW (one J x J float tensor) for backward, nothing per mode."""
    j, tokens = 64, 512  # many tokens per row of W: the engine materializes dW
    result = layer_step.memory_worker(name, j, tokens)
    if weights_saved:
        assert result["saved_bytes"] == weights_saved * 4 * j * j
    else:  # LoRA keeps a tokens x r intermediate, less than one copy of the input
        assert 0 < result["saved_bytes"] < 4 * tokens * j
    assert result["peak_bytes"] >= 0


def test_model_step_runs_on_a_tiny_llama(tmp_path):
    out = tmp_path / "model.md"
    text = model_step.main(
        [
            "--model",
            "tiny",
            "--reps",
            "1",
            "--batch",
            "1",
            "--length",
            "8",
            "--methods",
            "lora,tera",
            "--out",
            str(out),
        ]
    )
    assert out.read_text() == text
    for label in ("LoRA (r=32)", "TeRA", "base model", "TeRA merge_and_unload()"):
        assert f"| {label} |" in text


def test_half_policy_compares_every_policy_with_errors_against_float64(tmp_path):
    import half_policy

    out = tmp_path / "half.md"
    half_policy.main(
        ["--size", "64", "--tokens", "32", "--modes", "square", "--reps", "1", "--out", str(out)]
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith("| (8,8")]
    cells = [re.split(r"(?<!\\) \| ", row) for row in rows]
    names = [c[2] for c in cells]
    assert names == ["base", *half_policy.policies(torch.bfloat16, "cpu")]
    shipped = cells[names.index("layer (shipped)")]
    cpu_policy = cells[names.index("dW fp32, apply fp32")]
    assert shipped[5] == cpu_policy[5]  # on a CPU the layer applies the update in float32
    for c in cells[1:]:
        assert 0 < float(c[5]) < 0.1  # bf16 rounding, relative to the adapter's contribution


def test_ablation_tables_group_variants_against_the_default_tera():
    import ablations

    def method(params, accs):
        return {
            "adapter_params": params,
            "tasks": {"t": {"seeds": [0, 1, 2], "accuracy": accs, "lr": 0.03}},
        }

    results = {
        "tasks": {"t": {}},
        "settings": {"steps": 100, "batch_size": 16},
        "preset": {"seeds": 3},
        "methods": {
            "tera": method(4872, [0.60, 0.62, 0.61]),
            "tera(zero_init=0)": method(4872, [0.65, 0.66, 0.66]),
        },
    }
    text = ablations.ablation_tables(results, ["zero_init"])
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == {"| `tera`", "| `tera(zero_init=0)`"}  # the missing variant is left out
    assert "| 61.00 ± 2.48 | 61.00 | - | - | - | 0.03 |" in rows["| `tera`"]
    assert "| +4.67 [" in rows["| `tera(zero_init=0)`"]  # variant minus TeRA, paired
    assert set(ablations.GROUPS) == {"zero_init", "scale", "tensorization", "factors", "budget"}
    with pytest.raises(SystemExit):
        ablations.main(["--groups", "nope"])


def test_quantized_accuracy_table_pairs_the_two_bases(tmp_path):
    import json as _json

    import quantized_accuracy

    def run(accs, size, quantize=None):
        entry = {
            "label": "TeRA",
            "trains": True,
            "base_weight_bytes": size,
            "tasks": {"t": {"seeds": [0, 1, 2], "accuracy": accs}},
        }
        return {"preset": {"quantize": quantize}, "methods": {"tera": entry}}

    for name, data in (
        ("f", run([0.6, 0.62, 0.61], 2**21)),
        ("q", run([0.58, 0.6, 0.6], 2**19, "4bit")),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(_json.dumps(data))
    out = tmp_path / "t.md"
    quantized_accuracy.main([str(tmp_path / "f"), str(tmp_path / "q"), "--out", str(out)])
    row = next(line for line in out.read_text().splitlines() if line.startswith("| TeRA"))
    assert row.startswith("| TeRA | 61.00 ± 2.48 | 59.33 ± 2.87 | -1.67 [")
    assert row.endswith("| 2.0 | 0.5 |")


def test_serve_times_every_variant_and_checks_the_targets(tmp_path):
    import json as _json

    import serve

    out = tmp_path / "serve.md"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GEMMs: threads only add contention on a shared machine
    try:
        tiny = ["--layers", "1", "--reps", "1", "--rows", "4", "--length", "4"]
        tiny += ["--new-tokens", "1", "--mixes", "1,2,4"]
        text = serve.main([*tiny, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert out.read_text() == text
    raw = _json.loads(out.with_suffix(".json").read_text())
    expected = ["base"]
    for kind in (*serve.KINDS, serve.PEFT):
        extra = [] if kind == serve.PEFT else [f"{kind}/merged"]
        expected += [f"{kind}/single", *extra, *(f"{kind}/mixed{m}" for m in (1, 2, 4))]
    assert list(raw["variants"]) == expected
    for key, variant in raw["variants"].items():
        for part, tokens in (("prefill", 4 * 4), ("decode", 4 * 1)):
            assert variant[part]["tokens"] == tokens
            assert variant[part]["tokens_per_s"] > 0, (key, part)
            if key != "base" and not key.endswith("/single"):
                assert variant[part]["x_single"]["median"] > 0, (key, part)
    mixed = raw["variants"]["tera/mixed4"]["prefill"]
    assert mixed["x_peft_mixed"]["median"] > 0
    assert [(t["kind"], t["part"], t["measure"]) for t in raw["targets"]] == [
        (kind, part, measure)
        for kind in ("tera", "vera")
        for part in ("prefill", "decode")
        for measure in ("x_single", "x_peft_mixed")
    ]
    assert all(isinstance(t["met"], bool) for t in raw["targets"])
    memory = raw["memory"]
    assert memory["tera"]["shared"] and memory["vera"]["shared"]
    assert memory["tera"]["frozen_bytes"] > 0 and memory["lora"]["frozen_bytes"] == 0
    assert 0 < memory["tera"]["adapter_bytes"] < memory["lora"]["adapter_bytes"]
    assert memory["lora"]["adapter_bytes"] == memory["peft-lora"]["adapter_bytes"]
    assert "| TeRA | 4 mixed (adapter_names) |" in text
    # the report again from its JSON, measuring nothing: the same Markdown
    again = tmp_path / "again.md"
    assert serve.main(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == text
    assert again.read_text() == text

"""Parameter-matched peers: ``vera(r=match)``, ``lora(r=match)``, ``hira(r=match)``."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tera.compare.matching import (
    MATCH_TOLERANCE,
    adapter_count,
    is_matched,
    match_ranks,
    nearest_rank,
)
from tera.compare.methods import METHODS, MethodSpecError, method_config, parse_methods
from tera.compare.presets import PRESETS
from tera.compare.report import markdown_table, parameter_ratios, unmatched_note, verdict_lines
from tera.compare.run import compare


@given(
    base=st.integers(0, 10_000),
    slope=st.integers(1, 2_000),
    target=st.integers(1, 200_000),
)
def test_nearest_rank_is_the_brute_force_nearest_with_ties_to_the_smaller(base, slope, target):
    def count(r: int) -> int:
        return base + slope * r

    found = nearest_rank(count, target)
    # every count is affine in r (VeRA: out + r per layer, LoRA / HiRA: r (in + out)), so
    # the nearest rank lies below target / slope + 2: search all of them
    best = min(range(1, target // slope + 3), key=lambda r: (abs(count(r) - target), r))
    assert found == best


def _qv_model() -> nn.Module:
    """Six 'layers' of MiniLM's q/v shapes (384 x 384), named like targets."""
    return nn.ModuleDict(
        {
            f"l{i}": nn.ModuleDict({"q": nn.Linear(384, 384), "v": nn.Linear(384, 384)})
            for i in range(6)
        }
    )


def test_vera_matches_teras_count_on_minilm_shapes_and_keeps_its_key():
    model = _qv_model()
    tera_count = adapter_count(METHODS["tera"], model, ["q", "v"])
    assert tera_count == 12 * (384 + 8 + 8 + 6)  # TeRA (384 | 8, 8, 6): the 4,872
    vera, lora, hira, tera = match_ranks(
        parse_methods("vera(r=match), lora(r=match), hira(r=match, lr=0.1), tera"),
        model,
        ["q", "v"],
    )
    assert dict(vera.fields)["r"] == 22  # 12 * (384 + 22) = 4,872 exactly
    assert vera.name == "vera(r=match)" and vera.label == "VeRA (r=22, matched)"
    assert dict(vera.matched) == {
        "reference": "tera",
        "reference_params": 4872,
        "params": 4872,
        "ratio": 1.0,
        "r": 22,
    }
    # LoRA / HiRA train r * (384 + 384) per layer: r = 1 is already 9,216 (1.89x)
    assert dict(lora.fields)["r"] == 1 and not is_matched(dict(lora.matched)["ratio"])
    assert lora.label == "LoRA (r=1, nearest match 1.89x)"
    assert hira.lr_grid == (0.1,) and dict(hira.fields)["r"] == 1  # other fields survive
    assert tera == parse_methods("tera")[0]  # untouched
    assert not tera.matched
    config = method_config(vera, ["q", "v"], [384])
    assert config is not None and config.r == 22  # type: ignore[attr-defined]


def test_match_is_only_for_the_rank_of_vera_lora_hira_and_is_sized_before_use():
    for spec, word in [
        ("tera(r=match)", "unknown field 'r'"),
        ("lora(alpha=match)", "only the rank r"),
        ("tera(out_mode=match)", "only the rank r"),
    ]:
        with pytest.raises(MethodSpecError, match=word):
            parse_methods(spec)
    (unsized,) = parse_methods("vera(r=match)")
    assert unsized.to_match
    with pytest.raises(MethodSpecError, match="sized on a model first"):
        method_config(unsized, ["q"], [384])


def test_is_matched_within_the_tolerance():
    assert pytest.approx(0.10) == MATCH_TOLERANCE
    assert is_matched(1.0) and is_matched(1.1) and is_matched(1 / 1.1)
    assert not is_matched(1.11) and not is_matched(0.9)


def test_report_states_each_ratio_and_flags_unmatched_methods():
    def entry(label: str, params: int) -> dict:
        accs = [0.6, 0.62, 0.61]
        return {
            "label": label,
            "adapter_params": params,
            "head_params": 0,
            "base_params": 10_000,
            "tasks": {"t": {"seeds": [0, 1, 2], "accuracy": accs, "lr": 0.1}},
        }

    results = {
        "tasks": {"t": {"majority_accuracy": 0.3}},
        "methods": {
            "tera": entry("TeRA", 100),
            "vera(r=match)": entry("VeRA (r=22, matched)", 100),
            "vera": entry("VeRA (r=256)", 158),
            "head": entry("Head only", 0),
        },
    }
    assert parameter_ratios(results) == {"tera": 1.0, "vera(r=match)": 1.0, "vera": 1.58}
    lines = verdict_lines(results)
    assert "(VeRA (r=22, matched): 1.00x TeRA; matched)" in lines[0]
    assert "(VeRA (r=256): 1.58x TeRA; not parameter-matched)" in lines[1]
    assert "(Head only trains no adapter)" in lines[2]
    note = unmatched_note(results)
    assert "VeRA (r=256) 1.58x" in note and "matched)" not in note.split(":")[1]
    table = markdown_table(results)
    assert "| x TeRA params |" in table and "| Δ (TeRA - row) [95% CI] |" in table
    assert "| VeRA (r=256) | 1.5554 | 1.58x (unmatched) |" in table
    assert "| VeRA (r=22, matched) | 0.9901 | 1.00x |" in table
    del results["methods"]["vera"]
    assert unmatched_note(results) == ""  # all matched: no flag


def test_compare_sizes_match_on_the_model_records_it_and_resumes(tmp_path):
    preset = PRESETS["smoke"].with_overrides(methods=("tera", "vera(r=match)", "vera"), seeds=1)
    results = compare(preset, tmp_path, log=lambda line: None)
    matched = results["methods"]["vera(r=match)"]
    tera = results["methods"]["tera"]
    assert matched["matched"]["params"] == matched["adapter_params"]  # what trained
    assert matched["matched"]["reference_params"] == tera["adapter_params"]
    assert is_matched(matched["adapter_params"] / tera["adapter_params"])
    assert matched["label"] == f"VeRA (r={matched['matched']['r']}, matched)"
    # each run record keeps the sized rank: a later default change cannot pass for this run
    record = next((tmp_path / "runs").glob("*/vera_r=match*/test-seed=0.json"))
    assert json.loads(record.read_text())["config"]["r"] == matched["matched"]["r"]
    text = (tmp_path / "results.md").read_text()
    assert "Not parameter-matched" in text and "VeRA (r=256)" in text.split("Not parameter")[1]
    again = compare(preset, tmp_path, resume=True, log=lambda line: None)
    assert again["runs_done"] == 0 and again["runs_reused"] > 0


def test_the_default_preset_compares_against_the_matched_vera():
    assert PRESETS["default"].methods[:3] == ("tera", "vera(r=match)", "vera")
    assert "vera(r=match)" in PRESETS["paper-small"].methods
    assert "lora(r=match)" in PRESETS["paper-small"].methods


def test_nearest_rank_stops_at_its_cap_and_only_ranked_methods_are_sized():
    import dataclasses

    from tera.compare.matching import _MAX_RANK

    assert nearest_rank(lambda r: r, 10**9) == _MAX_RANK  # unreachable: the largest rank tried
    sneaky = dataclasses.replace(METHODS["tera"], name="tera(r=match)", fields=(("r", "match"),))
    with pytest.raises(MethodSpecError, match="vera, lora or hira only"):
        match_ranks([sneaky], _qv_model(), ["q", "v"])

"""benchmarks/many_adapters.py runs end to end at tiny sizes (no timing is asserted).

Checked: every part reports (stores written then reused, serving variants with their
ratios, the FLOP floor, training, memory samples) and the targets are those of the issue.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import many_adapters
from model_step import smollm2_shape


def test_the_many_adapters_benchmark_runs_every_part(tmp_path):
    out = tmp_path / "many.md"
    tiny = ["--adapters", "24", "--layers", "1", "--rows", "4", "--length", "4"]
    tiny += ["--new-tokens", "1", "--reps", "1", "--train-rows", "4", "--train-length", "2"]
    tiny += ["--train-reps", "1", "--memory-calls", "6", "--memory-rows", "2", "--kinds", "tera"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny GEMMs: threads only add contention on a shared machine
    try:
        many_adapters.main([*tiny, "--store-dir", str(tmp_path / "stores"), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw["kinds"]) == {"tera"}  # VeRA's path is the same code with another bank
    for kind in ("tera",):
        k = raw["kinds"][kind]
        assert k["adapters"] == 24 and k["write_s"] is not None and k["open_s"] >= 0
        assert (tmp_path / "stores" / f"{kind}-1layers-24").is_dir()
        for part in ("prefill", "decode"):
            assert raw["serving"][f"{kind}/random4 {part}"]["x_single"]["median"] > 0
            assert raw["serving"][f"{kind}/random4 {part}"]["x_peft_mixed"]["median"] > 0
        assert set(raw["training"][kind]) == {"one adapter", "4 adapters (a group)"}
    floor = raw["tera_floor"]
    assert floor["mixed_extra_flops"] > 0 and 0 < floor["floor_x_single"] <= 1.5
    (memory,) = raw["memory"].values()
    assert memory["samples"][-1]["call"] == 6 and memory["samples"][-1]["touched"] >= 2
    assert len(raw["targets"]) == 3 + 2 and all(isinstance(t["met"], bool) for t in raw["targets"])
    assert "FLOP floor" in out.read_text()
    # a second run finds the stores and reuses them
    torch.manual_seed(0)
    template = many_adapters._adapted(smollm2_shape(1).eval(), "tera")
    folder = tmp_path / "stores" / "tera-1layers-24"
    assert many_adapters.ensure_store(template, folder, 24) == (folder, None)

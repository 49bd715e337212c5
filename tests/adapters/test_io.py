"""Saving is all or nothing: a failure at any point of a save leaves one whole version.

``save_pretrained`` stages every new file in a hidden folder, commits with one rename (the
journal), then moves the staged files into place (:mod:`tera.adapters.atomic`). Each test
makes one step fail and checks what the folder then holds: before the commit, the bytes
of the previous save (and no litter); after it, the new save (read through the journal,
finished by the next save). Real kills are in test_atomic_save.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from tera.adapters import adapt, from_pretrained, io
from tera.adapters.atomic import JOURNAL, write_files
from tera.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from tera.errors import LoadError, SaveError
from tests.adapters.common import inputs, llama, make_config, randomize_adapter, run


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` (hidden ones included) -> its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def saved(tmp_path):
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model, seed=1)
    model.save_pretrained(tmp_path)
    expected = run(model, "llama", inputs("llama"))
    randomize_adapter(model, seed=2)  # the next save would change the weights
    return model, _snapshot(tmp_path), expected


def _outputs(directory: Path) -> torch.Tensor:
    return run(from_pretrained(llama(), directory), "llama", inputs("llama"))


def _assert_old_adapter_intact(directory: Path, before: dict[str, bytes], expected) -> None:
    assert _snapshot(directory) == before  # same bytes, and no staging or journal left
    assert sorted(os.listdir(directory)) == sorted(before)
    assert torch.equal(_outputs(directory), expected)


def _fail_replace(monkeypatch, which: int) -> list[str]:
    """Make the save's ``which``-th ``os.replace`` raise; returns the names it was given."""
    real_replace = os.replace
    calls: list[str] = []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == which:
            raise OSError("simulated failure of a rename")
        return real_replace(src, dst)

    monkeypatch.setattr("tera.adapters.atomic.os.replace", replace)
    return calls


def test_a_failing_commit_keeps_the_old_adapter(saved, tmp_path, monkeypatch):
    model, before, expected = saved
    calls = _fail_replace(monkeypatch, 1)
    with pytest.raises(SaveError, match=rf"cannot save into {tmp_path} .*simulated failure"):
        model.save_pretrained(tmp_path)
    assert calls == [JOURNAL]  # the commit: nothing was moved
    monkeypatch.undo()
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_a_failing_move_after_the_commit_keeps_the_new_adapter(saved, tmp_path, monkeypatch):
    """Past the commit the new version is the folder's: read through the journal, finished
    by the next save."""
    model, before, _ = saved
    new = run(model, "llama", inputs("llama"))
    calls = _fail_replace(monkeypatch, 3)  # the journal, the weights, then the config fails
    with pytest.raises(SaveError, match="committed .* loads as the new version"):
        model.save_pretrained(tmp_path)
    assert calls == [JOURNAL, "adapter_model.safetensors", "adapter_config.json"]
    monkeypatch.undo()
    assert (tmp_path / JOURNAL).is_file()
    assert torch.equal(_outputs(tmp_path), new)  # new weights in place, new config staged
    model.save_pretrained(tmp_path)  # rolls the journal forward, then saves again
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert torch.equal(_outputs(tmp_path), new)


def test_failing_config_write_keeps_the_old_weights(saved, tmp_path, monkeypatch):
    model, before, expected = saved
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        real_write_text(self, '{"truncated')  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(SaveError, match="No space left on device.*free disk space"):
        model.save_pretrained(tmp_path)
    monkeypatch.undo()
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_failing_weights_write_keeps_everything(saved, tmp_path, monkeypatch):
    model, before, expected = saved

    def save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 10)  # a partial file under the staged name
        raise KeyboardInterrupt  # even an interrupt mid-write leaves the old adapter

    monkeypatch.setattr("tera.adapters.io.save_file", save_file)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    monkeypatch.undo()
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_a_successful_save_replaces_both_files_and_keeps_other_files(saved, tmp_path):
    model, before, _ = saved
    (tmp_path / "trainer_state.json").write_text("{}")  # a Trainer checkpoint's own files
    (tmp_path / "optimizer.pt").write_bytes(b"state")
    model.save_pretrained(tmp_path)
    after = _snapshot(tmp_path)
    assert sorted(after) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    ]
    assert after["optimizer.pt"] == b"state"
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    assert torch.equal(_outputs(tmp_path), run(model, "llama", inputs("llama")))


def test_first_save_that_fails_leaves_an_empty_directory(tmp_path, monkeypatch):
    model = adapt(llama(), make_config("lora", "llama"))
    _fail_replace(monkeypatch, 1)
    with pytest.raises(SaveError):
        model.save_pretrained(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []  # the staged files were removed again


# -- the transaction's edges (tera.adapters.atomic) ------------------------------------------
def _writer(text: str):
    return lambda path: Path(path).write_text(text)


@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", ".tera-journal.json", "a\\b", ""])
def test_names_outside_the_folder_are_refused(tmp_path, name):
    with pytest.raises(SaveError, match="is not a file name below the save folder"):
        write_files(tmp_path, {name: _writer("x")})
    assert list(tmp_path.iterdir()) == []


def test_a_destination_that_is_a_folder_is_refused_before_writing(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(SaveError, match=rf"cannot save {tmp_path / 'x'}: it is a folder"):
        write_files(tmp_path, {"y": _writer("y"), "x": _writer("x")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_a_path_too_long_says_so(tmp_path):
    with pytest.raises(SaveError, match="choose a shorter path"):
        write_files(tmp_path / ("d" * 300), {"x": _writer("x")})


def test_a_corrupted_journal_is_refused_by_loads_and_saves(tmp_path):
    model = adapt(llama(), make_config("lora", "llama"))
    model.save_pretrained(tmp_path)
    (tmp_path / JOURNAL).write_text("{not json")
    with pytest.raises(LoadError, match=rf"{tmp_path / JOURNAL} is not a journal .*delete it"):
        from_pretrained(llama(), tmp_path)
    with pytest.raises(SaveError, match="is not a journal"):
        model.save_pretrained(tmp_path)
    (tmp_path / JOURNAL).unlink()
    (tmp_path / JOURNAL).mkdir()  # unreadable as a file
    with pytest.raises(LoadError, match=rf"cannot read {tmp_path / JOURNAL}"):
        from_pretrained(llama(), tmp_path)


def test_a_save_into_a_subfolder_finishes_the_save_above_it_first(tmp_path, monkeypatch):
    """A save of several adapters killed past its commit (journal in the folder), then a
    save straight into its sub-folder: the journal above is finished first, so it cannot
    later move its older files over the newer ones."""
    model = adapt(llama(), make_config("lora", "llama"))
    model.add_adapter("b", make_config("lora", "llama"))
    model.save_pretrained(tmp_path)
    randomize_adapter(model, seed=3)
    first = run(model, "llama", inputs("llama"))
    _fail_replace(monkeypatch, 2)  # the journal goes in, the first move fails
    with pytest.raises(SaveError, match="committed"):
        model.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / JOURNAL).is_file()
    other = adapt(llama(), make_config("lora", "llama"))
    randomize_adapter(other, seed=4)
    other.save_pretrained(tmp_path / "b")  # one adapter straight into the sub-folder
    assert not (tmp_path / JOURNAL).exists()
    assert torch.equal(_outputs(tmp_path), first)  # "default": the committed save's
    loaded = from_pretrained(llama(), tmp_path / "b")
    assert torch.equal(run(loaded, "llama", inputs("llama")), run(other, "llama", inputs("llama")))
    assert _litter(tmp_path) == []


def _litter(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".tera-*"))


# -- reading: every field checked ------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 99, "format_version 99 but this tera reads up to 1"),
        ("format_version", True, "no valid format_version"),
        ("targets", {"x": {"in_features": 0, "out_features": 4}}, "target 'x' without positive"),
        ("targets", {"x": [4, 4]}, "target 'x' without positive"),
        ("factor_keys", "k", "no 'factor_keys'"),
        ("includes_factors", "yes", "'includes_factors' that is not true/false"),
        ("modules_to_save", [1], "'modules_to_save' that is not a list of names"),
        ("factor_casts", {"k": ["int8"]}, "'factor_casts' that is not"),
        ("save_id", 7, "'save_id' that is not a string"),
        ("weights_sha256", "00", "'weights_sha256' that is not 64 hex digits"),
        ("config", {"r": 4}, "no 'config' object with a 'kind'"),
    ],
)
def test_every_field_is_checked(tmp_path, field, value, message):
    model = adapt(llama(), make_config("lora", "llama"))
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta[field] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(LoadError, match=re.escape(message)):
        io.read_meta(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe{}", "is not UTF-8 text"), (b"[" * 100_000, "nests JSON too deeply")],
)
def test_unreadable_json_is_our_error(tmp_path, content, message):
    adapt(llama(), make_config("lora", "llama")).save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_bytes(content)
    with pytest.raises(LoadError, match=rf"{tmp_path / CONFIG_NAME} {message}"):
        io.read_adapter(tmp_path)


def test_missing_files_are_named(tmp_path):
    adapt(llama(), make_config("lora", "llama")).save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(LoadError, match=rf"no {WEIGHTS_NAME} in {tmp_path}"):
        io.read_adapter(tmp_path)
    with pytest.raises(LoadError, match=rf"no {WEIGHTS_NAME} in {tmp_path}"):
        io.read_tensors(tmp_path)


def test_a_folder_of_another_tool_reads_without_the_field_checks(tmp_path):
    io.write_adapter(tmp_path, {"kind": "lora"}, {"x": torch.ones(2)})
    meta, tensors = io.read_adapter(tmp_path, check=False)
    assert meta["kind"] == "lora" and "save_id" not in meta and "weights_sha256" not in meta
    assert torch.equal(tensors["x"], torch.ones(2))
    (tmp_path / CONFIG_NAME).write_text("[1]")
    with pytest.raises(LoadError, match="holds a JSON array, not an object"):
        io.read_adapter(tmp_path, check=False)


def test_a_file_moved_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    """A staged file a finishing save moves away between resolving and reading it."""
    model = adapt(llama(), make_config("lora", "llama"))
    model.save_pretrained(tmp_path)
    real = io._load_json
    calls = []

    def load_json(path, shown):
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(path)
        return real(path, shown)

    monkeypatch.setattr(io, "_load_json", load_json)
    meta, _ = io.read_adapter(tmp_path)
    assert len(calls) == 2 and meta["kind"] == "lora"
    monkeypatch.setattr(
        io, "_load_json", lambda path, shown: (_ for _ in ()).throw(FileNotFoundError(path))
    )
    with pytest.raises(LoadError, match="changed while they were read"):
        io.read_adapter(tmp_path)

"""Saving is all or nothing: a failure at any point of a save leaves one whole version.

``save_pretrained`` stages every new file in a hidden folder, commits with one rename (the
journal), then moves the staged files into place (:mod:`tera.adapters.atomic`). Each test
makes one step fail and checks what the folder then holds: before the commit, the bytes
of the previous save (and no litter); after it, the new save (read through the journal,
finished by the next save). Real kills are in test_atomic_save.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tera.adapters import adapt, from_pretrained
from tera.adapters.atomic import JOURNAL
from tera.errors import SaveError
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

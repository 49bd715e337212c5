"""Saving is all or nothing: a failure at any point of a save leaves the old adapter intact.

``save_pretrained`` writes ``adapter_model.safetensors`` and ``adapter_config.json`` to
temporary names, then renames both into place, rolling back the first rename if the
second fails. Each test makes one step fail and checks that the directory holds the bytes
of the previous save, still loads to the previous outputs, and has no temporary files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tera.adapters import adapt, from_pretrained
from tests.adapters.common import inputs, llama, make_config, randomize_adapter, run


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p: (directory / p).read_bytes() for p in sorted(os.listdir(directory))}


@pytest.fixture
def saved(tmp_path):
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model, seed=1)
    model.save_pretrained(tmp_path)
    expected = run(model, "llama", inputs("llama"))
    randomize_adapter(model, seed=2)  # the next save would change the weights
    return model, _snapshot(tmp_path), expected


def _assert_old_adapter_intact(directory: Path, before: dict[str, bytes], expected) -> None:
    assert _snapshot(directory) == before  # same bytes, and no .tmp / .bak files left
    loaded = from_pretrained(llama(), directory)
    assert torch.equal(run(loaded, "llama", inputs("llama")), expected)


def _crash_on_second_rename(monkeypatch) -> list[str]:
    """Make a save's second ``os.replace`` raise; returns the names it was asked to rename."""
    real_replace = os.replace
    calls: list[str] = []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the weights are already in place; the config rename fails
            raise OSError("simulated crash between the two renames")
        return real_replace(src, dst)

    monkeypatch.setattr("tera.adapters.io.os.replace", replace)
    return calls


def test_failing_second_rename_rolls_back_the_first(saved, tmp_path, monkeypatch):
    model, before, expected = saved
    calls = _crash_on_second_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        model.save_pretrained(tmp_path)
    assert calls[:2] == ["adapter_model.safetensors", "adapter_config.json"]
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_failing_config_write_keeps_the_old_weights(saved, tmp_path, monkeypatch):
    model, before, expected = saved
    real_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        real_write_text(self, '{"truncated')  # half a file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_failing_weights_write_keeps_everything(saved, tmp_path, monkeypatch):
    model, before, expected = saved

    def save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x00" * 10)  # a partial file under the temporary name
        raise KeyboardInterrupt  # even an interrupt mid-write leaves the old adapter

    monkeypatch.setattr("tera.adapters.io.save_file", save_file)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    _assert_old_adapter_intact(tmp_path, before, expected)


def test_a_successful_save_replaces_both_files(saved, tmp_path):
    model, before, _ = saved
    model.save_pretrained(tmp_path)
    after = _snapshot(tmp_path)
    assert sorted(after) == ["adapter_config.json", "adapter_model.safetensors"]
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    loaded = from_pretrained(llama(), tmp_path)
    assert torch.equal(run(loaded, "llama", inputs("llama")), run(model, "llama", inputs("llama")))


def test_first_save_that_fails_leaves_an_empty_directory(tmp_path, monkeypatch):
    model = adapt(llama(), make_config("lora", "llama"))
    _crash_on_second_rename(monkeypatch)
    with pytest.raises(OSError):
        model.save_pretrained(tmp_path / "new")
    assert os.listdir(tmp_path / "new") == []  # the renamed weights were removed again


def test_filesystems_without_hard_links_fall_back_to_copies(saved, tmp_path, monkeypatch):
    model, before, expected = saved

    def no_links(src, dst):
        raise OSError("hard links not supported")

    real_replace = os.replace  # the patch below replaces os.replace itself
    monkeypatch.setattr("tera.adapters.io.os.link", no_links)
    _crash_on_second_rename(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        model.save_pretrained(tmp_path)
    monkeypatch.setattr("tera.adapters.io.os.replace", real_replace)
    _assert_old_adapter_intact(tmp_path, before, expected)

"""Issue 14's defects, one test each: meta-device adapting, NaN/inf files, killed-save leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tera.adapters import adapt, from_pretrained
from tera.adapters.io import WEIGHTS_NAME, sweep_leftovers
from tera.errors import LoadError
from tests.adapters.common import KINDS, inputs, llama, make_config, randomize_adapter, run


def _meta_llama():
    with torch.device("meta"):
        return llama()


@torch.no_grad()
def _materialize(model, real) -> None:
    """The documented path after ``to_empty``: the base weights, then the base's own
    non-persistent buffers (Llama's rotary frequencies are in no checkpoint; transformers
    recomputes them when it loads a model)."""
    model.load_base_state_dict(real.state_dict())
    buffers = dict(model.base_model.named_buffers())
    for name, value in real.named_buffers():
        buffers[name].copy_(value)


@pytest.mark.parametrize("kind", KINDS)
def test_every_adapter_adapts_a_meta_device_model(kind):
    """Found: TeRA's core normalization copied meta factors to the CPU and raised."""
    model = adapt(_meta_llama(), make_config(kind, "llama"))
    assert all(t.is_meta for _, t in model.adapter_parameters())
    assert all(t.is_meta for _, t in model.shared_factors.items())
    ordinary = adapt(llama(), make_config(kind, "llama"))
    assert model.shared_factors.fingerprint() == ordinary.shared_factors.fingerprint()
    assert model.parameter_report() == ordinary.parameter_report()


@pytest.mark.parametrize("kind", KINDS)
def test_the_meta_path_gives_the_outputs_of_the_ordinary_path(kind, tmp_path):
    """meta -> adapt -> to_empty -> base weights -> (adapter weights) == the ordinary path."""
    real = llama()
    batch = inputs("llama")
    ordinary = adapt(llama(), make_config(kind, "llama"))
    model = adapt(_meta_llama(), make_config(kind, "llama")).to_empty(device="cpu")
    _materialize(model, real)
    assert not any(t.is_meta for t in model.state_dict().values())
    assert torch.equal(run(model, "llama", batch), run(ordinary, "llama", batch))  # fresh init
    for (name, a), (_, b) in zip(model.adapter_parameters(), ordinary.adapter_parameters()):
        assert torch.equal(a, b), name
    randomize_adapter(ordinary, seed=3)
    ordinary.save_pretrained(tmp_path)
    model.load_adapter_weights(tmp_path)  # a trained adapter onto the meta-built model
    assert torch.equal(run(model, "llama", batch), run(ordinary, "llama", batch))
    loaded = from_pretrained(llama(), tmp_path)
    assert torch.equal(run(model, "llama", batch), run(loaded, "llama", batch))


def test_base_weights_that_do_not_fit_are_named():
    model = adapt(_meta_llama(), make_config("lora", "llama")).to_empty(device="cpu")
    state = llama().state_dict()
    state.pop("lm_head.weight")
    with pytest.raises(LoadError, match=r"missing \['lm_head.weight'\]"):
        model.load_base_state_dict(state)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_file_holding_nan_or_inf_is_refused_naming_the_tensor(tmp_path, bad):
    model = adapt(llama(), make_config("tera", "llama"))
    model.save_pretrained(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    tensors = load_file(str(path))
    name = sorted(tensors)[1]
    tensors[name][0] = bad
    save_file(tensors, str(path))
    with pytest.raises(LoadError, match=rf"tensor '{name}' in .* holds 1 NaN/inf value"):
        from_pretrained(llama(), tmp_path)
    with pytest.raises(LoadError, match=rf"tensor '{name}'"):
        model.load_adapter_weights(tmp_path)


_KILLED_SAVE = """
import os, signal, sys
import safetensors.torch
from tera.adapters import adapt
from tests.adapters.common import llama, make_config
real = safetensors.torch.save_file
def save_then_die(tensors, path, metadata=None):
    real(tensors, path, metadata=metadata)
    os.kill(os.getpid(), signal.SIGKILL)   # killed with the temporary file written
import tera.adapters.io as io
io.save_file = save_then_die
adapt(llama(), make_config("lora", "llama")).save_pretrained(sys.argv[1])
"""


def test_a_save_sweeps_what_killed_saves_left_and_nothing_else(tmp_path):
    model = adapt(llama(), make_config("lora", "llama"))
    model.save_pretrained(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for _ in range(2):  # real kills: no finally block runs
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_KILLED_SAVE), str(tmp_path)], env=env
        )
        assert done.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    # each killed save swept the one before it: only the last kill's staging folder is left
    assert len(stale) == 1 and stale[0].startswith(".tera-staging-")
    bak = tmp_path / f".adapter_config.json.{'a' * 32}.bak"
    bak.write_text("{}")  # a backup an older tera left when killed between its renames
    others = [".adapter_config.json.tmp", "notes.tmp", ".adapter_model.safetensors.123.bak"]
    for name in others:  # not of the save's naming: never touched
        (tmp_path / name).write_text("keep")
    randomize_adapter(model, seed=4)
    model.save_pretrained(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["adapter_config.json", "adapter_model.safetensors", *others])
    assert sweep_leftovers(tmp_path) == []
    loaded = from_pretrained(llama(), tmp_path)
    assert torch.equal(run(loaded, "llama", inputs("llama")), run(model, "llama", inputs("llama")))

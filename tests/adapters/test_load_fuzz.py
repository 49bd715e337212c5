"""The loader against random damage: every mutation loads to the saved outputs or is refused.

Hypothesis mutates a valid tera folder (a tiny TeRA model with ``modules_to_save``, saved
with and without its frozen factors): fields of ``adapter_config.json`` deleted or
replaced by random JSON, its text cut or bit-flipped; entries of the safetensors header
(dtype, shape, offsets, names, metadata) changed; single values replaced (NaN, inf, huge,
ordinary); bytes of the weights file flipped or cut. Whatever it does, loading either
gives exactly the outputs of the model that saved (``torch.equal``), or raises one of
tera's errors naming the folder: never a raw exception, never other weights.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from tera.adapters import AdaptedModel, TeRAConfig, adapt
from tera.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from tera.errors import TeraError

CONFIG = TeRAConfig(in_mode=4, out_mode=4, target_modules=["0", "2"], modules_to_save=["4"])
X = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    ).eval()


@pytest.fixture(scope="module", params=[False, True], ids=["regenerated", "with-factors"])
def template(request, tmp_path_factory):
    """A saved folder's two files (bytes) and the outputs of the model that saved them."""
    model = adapt(_base(), CONFIG)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        model.base_model[4].weight.add_(1.0)  # modules_to_save: differs from the base's
    model.eval()
    folder = tmp_path_factory.mktemp("template")
    model.save_pretrained(folder, include_factors=request.param)
    files = {name: (folder / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}
    return files, model(X).detach()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _mutate_json(data: st.DataObject, value: object) -> object:
    """Replace, delete or extend one randomly chosen place in a JSON document."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        action = data.draw(st.sampled_from(["descend", "delete", "replace"]))
        out = dict(value)
        if action == "delete":
            del out[key]
        elif action == "replace":
            out[key] = data.draw(json_values)
        else:
            out[key] = _mutate_json(data, value[key])
        return out
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        out_list[i] = _mutate_json(data, value[i])
        return out_list
    if isinstance(value, dict) and data.draw(st.booleans()):
        return {**value, data.draw(st.text(max_size=6)): data.draw(json_values)}
    return data.draw(json_values)


def _damage_bytes(data: st.DataObject, raw: bytes) -> bytes:
    if data.draw(st.booleans()):
        return raw[: data.draw(st.integers(0, len(raw) - 1))]  # cut
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] ^= 1 << data.draw(st.integers(0, 7))
    return bytes(out)


def _split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict, body: bytes, keep_length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", keep_length if keep_length is not None else len(text)) + text + body


def _mutate_header(data: st.DataObject, raw: bytes) -> bytes:
    header, body = _split(raw)
    names = sorted(k for k in header if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    entry = dict(header[name])
    what = data.draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename", "meta"]))
    if what == "dtype":
        entry["dtype"] = data.draw(
            st.sampled_from(["F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3"])
        )
    elif what == "shape":
        entry["shape"] = data.draw(st.lists(st.integers(0, 40), max_size=3))
    elif what == "offsets":
        entry["data_offsets"] = data.draw(st.lists(st.integers(0, len(body) + 8), max_size=3))
    elif what == "meta":
        header["__metadata__"] = data.draw(
            st.dictionaries(st.text(max_size=8), st.text(max_size=8))
        )
    if what == "drop":
        del header[name]
    elif what == "rename":
        header[data.draw(st.text(min_size=1, max_size=12))] = header.pop(name)
    else:
        header[name] = entry
    length = data.draw(st.none() | st.integers(0, 2**40))  # sometimes a wrong length
    return _join(header, body, length)


def _mutate_value(data: st.DataObject, folder: Path) -> None:
    path = folder / WEIGHTS_NAME
    _, body = _split(path.read_bytes())
    header, _ = _split(path.read_bytes())
    tensors = load_file(str(path))
    name = data.draw(st.sampled_from(sorted(tensors)))
    flat = tensors[name].reshape(-1).clone()
    i = data.draw(st.integers(0, flat.numel() - 1))
    flat[i] = data.draw(
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 3e38, -1e30, 1e19])
        | st.floats(-10, 10)
    )
    tensors[name] = flat.reshape(tensors[name].shape)
    if data.draw(st.booleans()):  # the same values as another dtype
        tensors[name] = tensors[name].to(data.draw(st.sampled_from([torch.int64, torch.float64])))
    save_file(tensors, str(path), metadata=header.get("__metadata__"))


@settings(
    max_examples=150,  # per template; ~4 s in all
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_damaged_folder_loads_to_the_saved_outputs_or_is_refused(template, tmp_path, data):
    files, expected = template
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example (tmp_path is per test)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    target = data.draw(st.sampled_from(["json", "json-bytes", "header", "value", "weights-bytes"]))
    if target == "json":
        meta = json.loads(files[CONFIG_NAME])
        (folder / CONFIG_NAME).write_text(json.dumps(_mutate_json(data, meta)))
    elif target == "json-bytes":
        (folder / CONFIG_NAME).write_bytes(_damage_bytes(data, files[CONFIG_NAME]))
    elif target == "header":
        (folder / WEIGHTS_NAME).write_bytes(_mutate_header(data, files[WEIGHTS_NAME]))
    elif target == "value":
        _mutate_value(data, folder)
    else:
        (folder / WEIGHTS_NAME).write_bytes(_damage_bytes(data, files[WEIGHTS_NAME]))
    how = data.draw(st.sampled_from(["from_pretrained", "load_adapter", "load_adapter_weights"]))
    try:
        if how == "from_pretrained":
            loaded = AdaptedModel.from_pretrained(_base(), folder)
            outputs = loaded(X)
        elif how == "load_adapter":
            model = adapt(_base(), CONFIG).eval()
            model.load_adapter(folder, adapter_name="other")
            model.set_adapter("other")
            outputs = model(X)
        else:
            model = adapt(_base(), CONFIG).eval()
            model.load_adapter_weights(folder)
            outputs = model(X)
    except TeraError as err:
        event(f"{target}: refused ({type(err).__name__})")
        assert str(folder) in str(err), err  # names the user's folder
        return
    event(f"{target}: loaded")
    assert torch.equal(outputs.detach(), expected)

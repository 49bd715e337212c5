"""The adapter store (tera.adapters.store): written folder by folder, opened memory-mapped.

Laws: a store's adapter gives what its folder gives loaded as a module (tolerance 1e-5,
common.ATOL: the same products summed by another path); an exported folder holds the
tensors that were added, bit for bit; opening reads no row; a corrupted shard, a corrupted
row, an index naming rows that do not exist or a bank that does not fit the model are
refused with our error, and every other adapter stays usable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tera.adapters import AdaptedModel, TeRAConfig, adapt, io, saving
from tera.adapters.store import INDEX_NAME, AdapterStore, StoreWarning
from tera.errors import AdapterStateError, LoadError
from tests.adapters.common import ATOL, RTOL, llama, make_config, mlp, randomize_adapter


def _folders(tmp_path: Path, n: int, kind: str = "tera") -> tuple[AdaptedModel, list[Path]]:
    """``n`` saved adapters of ``kind`` for the tiny Llama (each its own random tensors)."""
    config = make_config(kind, "llama")
    model = adapt(llama(), config)
    folders = []
    for i in range(n):
        randomize_adapter(model, seed=100 + i)
        folder = tmp_path / f"u{i}"
        model.save_pretrained(folder)
        folders.append(folder)
    return model, folders


def _store(tmp_path: Path, folders: list[Path], shard_rows: int = 3) -> Path:
    with AdapterStore.create(tmp_path / "store", shard_rows=shard_rows) as store:
        for i, folder in enumerate(folders):
            store.add(f"u{i}", folder)
    return tmp_path / "store"


def _batch(rows: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rows)
    return {"input_ids": torch.randint(1, 100, (rows, 6), generator=g)}


def _served(kind: str = "tera") -> AdaptedModel:
    return adapt(llama(), make_config(kind, "llama"))


@pytest.mark.parametrize("kind", ["tera", "vera", "lora", "hira"])
def test_a_stores_adapters_give_what_their_folders_give(tmp_path, kind):
    _, folders = _folders(tmp_path, 7, kind)
    path = _store(tmp_path, folders)
    reference = _served(kind)
    for i in (1, 4, 6):
        reference.load_adapter(folders[i], adapter_name=f"u{i}")
    model = _served(kind)
    params = len(list(model.parameters()))
    added = model.load_adapters(path)
    assert added == [f"u{i}" for i in range(7)]
    assert len(list(model.parameters())) == params  # no module, no parameter per adapter
    rows = ["u4", "__base__", "u1", "u6", "u4"]
    batch = _batch(len(rows))
    with torch.no_grad():
        got = model(**batch, adapter_names=rows).logits
        want = reference(**batch, adapter_names=rows).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_shards_are_safetensors_with_rows_on_pages(tmp_path):
    _, folders = _folders(tmp_path, 5)
    path = _store(tmp_path, folders, shard_rows=4)
    index = json.loads((path / INDEX_NAME).read_text())
    assert [len(s["names"]) for s in index["shards"]] == [4, 1]
    (bank,) = index["banks"].values()
    assert bank["meta"]["kind"] == "tera" and "factor_fingerprint" in bank["meta"]
    for shard in index["shards"]:
        file = path / shard["file"]
        with safe_open(str(file), "pt") as f:
            rows = f.get_tensor("rows")
            assert rows.shape[0] == len(shard["names"]) and rows.shape[1] % 1024 == 0
            assert f.get_tensor("checksums").shape == (rows.shape[0],)
        header = int.from_bytes(file.read_bytes()[:8], "little")
        assert (8 + header) % 4096 == 0  # the rows start on a page


def test_export_gives_back_the_tensors_added(tmp_path):
    _, folders = _folders(tmp_path, 3)
    path = _store(tmp_path, folders)
    store = AdapterStore.open(path)
    assert sorted(store.names()) == ["u0", "u1", "u2"] and "u1" in store and len(store) == 3
    store.export("u1", tmp_path / "back")
    want, got = io.read_tensors(folders[1]), io.read_tensors(tmp_path / "back")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # the exported folder loads as a module adapter
    model = _served()
    model.load_adapter(tmp_path / "back", adapter_name="back")
    with pytest.raises(AdapterStateError, match="holds no adapter"):
        store.export("nobody", tmp_path / "x")


def test_opening_reads_no_row_and_a_call_reads_only_its_adapters(tmp_path):
    _, folders = _folders(tmp_path, 6)
    path = _store(tmp_path, folders)
    model = _served()
    model.load_adapters(path)
    tables = [t for bank in model.adapter_rows.banks.values() for t in bank.tables if t.mapped]
    assert tables and not any(bool(t._verified.any()) for t in tables)
    with torch.no_grad():
        model(**_batch(2), adapter_names=["u5", "u0"])
    assert sum(int(t._verified.sum()) for t in tables) == 2


def test_adding_names_replacing_and_reopening(tmp_path):
    _, folders = _folders(tmp_path, 4)
    path = _store(tmp_path, folders[:2])
    store = AdapterStore.open(path)
    with pytest.raises(AdapterStateError, match="already holds"):
        store.add("u0", folders[3])
    with pytest.raises(AdapterStateError, match="without dots"):
        store.add("a.b", folders[3])
    model = _served()
    assert model.load_adapters(path) == ["u0", "u1"]
    store.add("u2", folders[2])
    store.add("u0", folders[3], replace=True)  # u0 gets u3's tensors
    store.flush()
    assert sorted(store.names()) == ["u0", "u1", "u2"]
    # the model picks up what is new; the names it holds keep their adapter
    assert model.load_adapters(path) == ["u2"]
    fresh = _served()
    fresh.load_adapters(path)
    fresh.load_adapter(folders[3], adapter_name="u3")
    with torch.no_grad():
        batch = _batch(2)
        torch.testing.assert_close(
            fresh(**batch, adapter_names=["u0", "u0"]).logits,
            fresh(**batch, adapter_names=["u3", "u3"]).logits,
            atol=ATOL,
            rtol=RTOL,
        )
    with pytest.raises(AdapterStateError, match="already holds"):
        AdapterStore.create(path)


def test_what_a_store_refuses_to_add(tmp_path):
    model, folders = _folders(tmp_path, 1)
    store = AdapterStore.create(tmp_path / "store")
    meta = saving.adapter_meta(model, False, "default")
    tensors = saving.adapter_state(model, False, "default")
    key = next(iter(tensors))
    bad = dict(tensors)
    bad[key] = torch.full_like(tensors[key], float("nan"))
    with pytest.raises(LoadError, match="NaN"):
        store.add_tensors("nan", meta, bad)
    with pytest.raises(LoadError, match="modules_to_save"):
        store.add_tensors("saved", {**meta, "modules_to_save": ["lm_head"]}, tensors)
    with pytest.raises(LoadError, match="lacks 'targets'"):
        store.add_tensors("meta", {k: v for k, v in meta.items() if k != "targets"}, tensors)
    wrong = dict(tensors)
    wrong[key] = torch.ones(3)
    store.add_tensors("ok", meta, tensors)
    with pytest.raises(LoadError, match="has shape"):
        store.add_tensors("wrong", meta, wrong)
    with pytest.raises(LoadError, match="no adapter_config.json"):
        store.add("missing", tmp_path / "nowhere")
    store.flush()
    assert list(AdapterStore.open(tmp_path / "store").names()) == ["ok"]


def _shard_of(path: Path, name: str) -> Path:
    index = json.loads((path / INDEX_NAME).read_text())
    return next(path / s["file"] for s in index["shards"] if name in s["names"])


def _check_refused_and_rest_usable(model: AdaptedModel, refused: str, usable: list[str]):
    with pytest.raises(LoadError, match=f"'{refused}' cannot be used"):
        model(**_batch(2), adapter_names=[refused, usable[0]])
    with torch.no_grad():
        model(**_batch(len(usable)), adapter_names=usable)


def test_a_truncated_shard_is_refused_and_the_rest_stays_usable(tmp_path):
    _, folders = _folders(tmp_path, 6)
    path = _store(tmp_path, folders)
    shard = _shard_of(path, "u4")
    shard.write_bytes(shard.read_bytes()[:-100])
    model = _served()
    with pytest.warns(StoreWarning, match="cannot be used"):
        added = model.load_adapters(path)
    assert added == ["u0", "u1", "u2"]
    assert "truncated" in model.adapter_rows.refused["u4"]
    _check_refused_and_rest_usable(model, "u4", ["u0", "u2"])
    # a garbage header, a missing file: the same
    shard.write_bytes(b"\xff" * 64)
    with pytest.warns(StoreWarning):
        AdapterStore.open(path)
    shard.unlink()
    with pytest.warns(StoreWarning, match="missing"):
        store = AdapterStore.open(path)
    assert set(store.refused) == {"u3", "u4", "u5"}
    with pytest.raises(LoadError, match="missing"):
        store.export("u5", tmp_path / "x")


def test_a_corrupted_row_is_refused_on_first_use_and_its_shard_mates_stay(tmp_path):
    _, folders = _folders(tmp_path, 3)
    path = _store(tmp_path, folders)
    shard = _shard_of(path, "u1")
    data = bytearray(shard.read_bytes())
    header = int.from_bytes(data[:8], "little")
    stride = json.loads(data[8 : 8 + header])["rows"]["shape"][1]
    at = 8 + header + 4 * stride + 40  # a float of row 1 (u1)
    data[at] ^= 0x01  # one flipped bit: still a finite float
    shard.write_bytes(bytes(data))
    model = _served()
    model.load_adapters(path)  # nothing read yet: no warning
    with pytest.raises(LoadError, match="'u1'.*corrupted"):
        model(**_batch(2), adapter_names=["u0", "u1"])
    with torch.no_grad():
        model(**_batch(2), adapter_names=["u0", "u2"])
    with pytest.raises(LoadError, match="corrupted"):
        AdapterStore.open(path).export("u1", tmp_path / "x")


def test_an_index_naming_missing_rows_refuses_those_names(tmp_path):
    _, folders = _folders(tmp_path, 2)
    path = _store(tmp_path, folders)
    index = json.loads((path / INDEX_NAME).read_text())
    index["shards"][0]["names"] += ["ghost"]
    (path / INDEX_NAME).write_text(json.dumps(index))
    model = _served()
    with pytest.warns(StoreWarning, match="holds"):
        assert model.load_adapters(path) == ["u0", "u1"]
    with pytest.raises(LoadError, match="'ghost' cannot be used: the index names row 2"):
        model(**_batch(1), adapter_names=["ghost"])
    (path / INDEX_NAME).write_text("{not json")
    with pytest.raises(LoadError, match="not valid JSON"):
        AdapterStore.open(path)
    with pytest.raises(LoadError, match="no tera_store.json"):
        AdapterStore.open(tmp_path / "nothing")


def test_a_bank_that_does_not_fit_the_model_is_refused(tmp_path):
    elsewhere = adapt(mlp(), make_config("tera", "mlp"))
    elsewhere.save_pretrained(tmp_path / "m")
    _, folders = _folders(tmp_path, 1)
    with AdapterStore.create(tmp_path / "store") as store:
        store.add("mlp", tmp_path / "m")
        store.add("llama", folders[0])
    model = _served()
    with pytest.warns(StoreWarning, match="do not fit"):
        assert model.load_adapters(tmp_path / "store") == ["llama"]
    assert "does not have" in model.adapter_rows.refused["mlp"]
    _check_refused_and_rest_usable(model, "mlp", ["llama"])


def test_a_writer_killed_before_its_index_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    _, folders = _folders(tmp_path, 3)
    path = _store(tmp_path, folders[:1])
    before = (path / INDEX_NAME).read_bytes()
    store = AdapterStore.open(path)
    store.add("u1", folders[1])
    real = os.replace

    def killed(src, dst):
        if str(dst).endswith(INDEX_NAME):
            raise KeyboardInterrupt  # the process dies between shard and index
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.flush()
    monkeypatch.setattr(os, "replace", real)
    assert (path / INDEX_NAME).read_bytes() == before
    assert list(AdapterStore.open(path).names()) == ["u0"]
    orphans = [p for p in path.iterdir() if p.name.startswith("shard-")]
    assert len(orphans) == 2  # the new shard exists, unnamed
    (path / ".tera_store.json.0123.tmp").write_text("{")  # a leftover of a killed write
    with AdapterStore.open(path) as again:
        again.add("u2", folders[2])
    assert sorted(AdapterStore.open(path).names()) == ["u0", "u2"]
    left = sorted(p.name for p in path.iterdir() if p.name != ".lock")
    assert len([n for n in left if n.startswith("shard-")]) == 2 and not any(
        n.endswith(".tmp") for n in left
    )


def test_two_thousand_adapters_load_as_rows_not_modules(tmp_path):
    model, _ = _folders(tmp_path, 0)
    meta = saving.adapter_meta(model, False, "default")
    state = saving.adapter_state(model, False, "default")
    g = torch.Generator().manual_seed(0)
    with AdapterStore.create(tmp_path / "store", shard_rows=512) as store:
        for i in range(2000):
            tensors = {k: 1.0 + 0.3 * torch.randn(v.shape, generator=g) for k, v in state.items()}
            store.add_tensors(f"user{i}", meta, tensors)
    served = _served()
    params = sum(p.numel() for p in served.parameters())
    assert len(served.load_adapters(tmp_path / "store")) == 2000
    assert sum(p.numel() for p in served.parameters()) == params
    assert served.adapter_bytes("user1999") == served.adapter_bytes()  # float32 d's
    names = ["user1999", "user0", "__base__", "user1024"]
    with torch.no_grad():
        got = served(**_batch(4), adapter_names=names).logits
        served.unpack_adapters(["user1999", "user0", "user1024"])
        want = served(**_batch(4), adapter_names=names).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_a_store_adapting_more_layers_wraps_them_and_a_bank_that_does_not_fit_unwraps(
    tmp_path,
):
    _, folders = _folders(tmp_path, 2)  # q_proj and v_proj
    path = _store(tmp_path, folders)
    model = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj"]))
    reference = _served()
    reference.load_adapter(folders[1], adapter_name="u1")
    assert model.load_adapters(path) == ["u0", "u1"]
    assert any("v_proj" in n for n in model.adapter_layers)  # wrapped for the rows
    with torch.no_grad():
        got = model(**_batch(2), adapter_names=["u1", "__base__"]).logits
        want = reference(**_batch(2), adapter_names=["u1", "__base__"]).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    # the same store edited: another fingerprint, another layout, other shapes
    index = json.loads((path / INDEX_NAME).read_text())
    (bank,) = index["banks"].values()
    for edit, message in (
        (lambda b: b["meta"].update(factor_fingerprint="0" * 64), "fingerprint"),
        (lambda b: b["layout"]["keys"].pop(), "layout"),
        (lambda b: b["meta"]["targets"].popitem()[1].update(in_features=7), "7"),
    ):
        edited = json.loads(json.dumps(index))
        edit(next(iter(edited["banks"].values())))
        (path / INDEX_NAME).write_text(json.dumps(edited))
        plain = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj"]))
        with pytest.warns(StoreWarning):
            assert plain.load_adapters(path) == []
        assert message in next(iter(plain.adapter_rows.refused.values()))
        assert not any("v_proj" in n for n in plain.adapter_layers)  # unwrapped again
        assert not any(type(m).__name__ == "AdapterLinear" and m.row_slots for m in plain.modules())


def test_shards_and_indexes_that_are_not_ours_are_refused(tmp_path):
    from tera.adapters.store import _write_shard

    _, folders = _folders(tmp_path, 2)
    path = _store(tmp_path, folders)
    index = json.loads((path / INDEX_NAME).read_text())
    shard = path / index["shards"][0]["file"]
    good = shard.read_bytes()
    for old, new, message in (
        (b'"F32"', b'"F16"', "rows of F16"),
        (b'"I64"', b'"I32"', "checksums of I32"),
        (b'"data_offsets":[0,', b'"data_offsets":[8,', "offsets"),
    ):
        shard.write_bytes(good.replace(old, new, 1))
        with pytest.warns(StoreWarning, match=message):
            AdapterStore.open(path)
    shard.write_bytes(good)
    # an empty shard is a shard (nothing in it); a name given twice is refused
    bank = index["shards"][0]["bank"]
    stride = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])["rows"]["shape"][1]
    _write_shard(path / "shard-empty.safetensors", bank, [], stride)
    index["shards"].append({"file": "shard-empty.safetensors", "bank": bank, "names": []})
    index["shards"][0]["names"][1] = "u0"
    (path / INDEX_NAME).write_text(json.dumps(index))
    store = AdapterStore.open(path)
    assert "2 times" in store.refused["u0"] and list(store.names()) == []
    assert repr(store).startswith("AdapterStore(") and "0 adapters" in repr(store)
    for broken, message in (
        ({"format": "other"}, "not the index"),
        ({**index, "format_version": 99}, "upgrade tera"),
        ({"format": index["format"], "format_version": 1}, "lacks its banks"),
    ):
        (path / INDEX_NAME).write_text(json.dumps(broken))
        with pytest.raises(LoadError, match=message):
            AdapterStore.open(path)


def test_a_writers_own_mistakes_are_refused(tmp_path):
    from tera.errors import ConfigError

    with pytest.raises(ConfigError, match="shard_rows"):
        AdapterStore.create(tmp_path / "s", shard_rows=0)
    _, folders = _folders(tmp_path, 2)
    store = AdapterStore.create(tmp_path / "store")
    store.add("a", folders[0], replace=True)
    with pytest.raises(AdapterStateError, match="waiting"):
        store.add("a", folders[1], replace=True)
    store.add("b", folders[1])
    other = AdapterStore.open(tmp_path / "store")  # a second writer adds "b" first
    other.add("b", folders[0])
    other.close()
    with pytest.raises(AdapterStateError, match="another writer"):
        store.flush()
    assert list(AdapterStore.open(tmp_path / "store").names()) == ["b"]

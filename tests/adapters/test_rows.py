"""Adapters held as rows of a bank (tera.adapters.rows), packed from modules and back.

The law: a row adapter gives what the same adapter held as a module gives, in a mixed
batch (every engine path), in ``generate`` with its KV cache, and alone after
``set_adapter``. Tolerance 1e-5 (common.ATOL): the row path sums the same products as the
module bank path, possibly in another order (a few float32 ulps of these O(1) logits); a
row routed to another adapter differs by ~0.1 (checked in test_threads).
"""

from __future__ import annotations

import threading

import pytest
import torch

from tera.adapters import AdaptedModel, LoRAConfig, VeRAConfig, adapt
from tera.adapters.rows import RowLayout, RowTable, row_checksums
from tera.errors import AdapterStateError, FormatError, LoadError, SaveError
from tests.adapters.common import (
    ATOL,
    KINDS,
    RTOL,
    llama,
    make_config,
    many_adapters,
    randomize_adapter,
)


def _many(kind: str, n: int) -> tuple[AdaptedModel, list[str]]:
    """A tiny Llama holding ``n`` module adapters of ``kind``, in eval mode."""
    model, names = many_adapters(kind, n)
    return model.eval(), names


def _batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with left padding of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, 8), generator=g)
    mask = torch.ones(rows, 8, dtype=torch.long)
    for b in range(rows):
        mask[b, : b % 3] = 0
        ids[b, : b % 3] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", KINDS)
def test_packed_rows_give_what_the_modules_give(kind):
    model, names = _many(kind, 7)
    rows = ["a3", "a1", "__base__", "a6", "a1", "a0", "a2", "a5"]
    batch = _batch(len(rows))
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = model(**batch, adapter_names=rows).logits
    params = len(list(model.parameters()))
    model.pack_adapters(names[1:])
    assert model.adapter_names == ["a0"]
    assert sorted(model.adapter_rows.names()) == sorted(names[1:])
    assert len(list(model.parameters())) < params  # the modules are gone
    for path in ("push", "materialize", "auto"):
        model.set_engine_path(path)
        with torch.no_grad():
            got = model(**batch, adapter_names=rows).logits
        torch.testing.assert_close(got[mask], expected[mask], atol=ATOL, rtol=RTOL, msg=path)
    # no state per batch composition: a batch of rows leaves nothing in the layers' caches
    for layer in model.adapter_layers.values():
        layer.bank_cache.clear()
    with torch.no_grad():
        model(**batch, adapter_names=["a2", "a4", "__base__", "a6", "a1", "a3", "a2", "a5"])
    assert all(not layer.bank_cache for layer in model.adapter_layers.values())


@pytest.mark.parametrize("kind", ["tera", "vera", "lora"])
def test_generate_with_row_adapters(kind):
    model, names = _many(kind, 4)
    rows = ["a2", "__base__", "a3", "a1"]
    batch = _batch(4, seed=3)
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    settings |= {"output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        expected = model.generate(**batch, adapter_names=rows, **settings)
        model.pack_adapters(names[1:])
        got = model.generate(**batch, adapter_names=rows, **settings)
    for step, (a, b) in enumerate(zip(got.scores, expected.scores, strict=True)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=f"step {step}")


def test_unpack_and_set_adapter_give_the_module_back_unchanged(tmp_path):
    model, names = _many("tera", 3)
    before = {k: p.detach().clone() for k, p in model.adapter_parameters("a2")}
    size = model.adapter_bytes("a2")
    batch = _batch(2)
    with torch.no_grad():
        model.set_adapter("a2")
        alone = model(**batch).logits
        model.set_adapter("a0")
    model.pack_adapters(["a1", "a2"])
    assert model.adapter_bytes("a2") == size  # a row: the same tensors, float32
    model.set_adapter("a2")  # unpacks it
    assert model.active_adapter == "a2" and "a2" not in model.adapter_rows
    after = dict(model.adapter_parameters("a2"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, alone, atol=0, rtol=0)
    # a row exported with save_pretrained loads as the module it was
    model.save_pretrained(tmp_path, selected_adapters=["a1"])
    other = adapt(llama(), make_config("tera", "llama"))
    other.load_adapter(tmp_path / "a1", adapter_name="a1")
    with torch.no_grad():
        want = model(**batch, adapter_names=["a1", "a1"]).logits
        got = other(**batch, adapter_names=["a1", "a1"]).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    with pytest.raises(FormatError, match="tera's format"):
        model.save_pretrained(tmp_path / "peft", selected_adapters=["a1"], format="peft")
    model.delete_adapter("a1")
    assert "a1" not in model.adapter_rows
    with pytest.raises(AdapterStateError, match="does not hold"):
        model(**batch, adapter_names=["a1", "a0"])


def test_rows_share_the_frozen_factors_of_the_modules():
    model, names = _many("tera", 3)
    model.pack_adapters(["a1"])
    for layer in model.adapter_layers.values():
        (slot,) = layer.row_slots.values()
        w0 = layer.base_weight()
        module_ops = layer.adapters["a0"].operands(w0)
        for op, row_op, stacked in zip(
            module_ops, slot.adapter.operands(w0), slot.stacked, strict=True
        ):
            if not stacked:
                assert op.data_ptr() == row_op.data_ptr()
    factors = sum(t.numel() for _, t in model.shared_factors.items())
    model.pack_adapters(["a2"])
    assert sum(t.numel() for _, t in model.shared_factors.items()) == factors


def test_bad_packs_and_names_are_refused():
    model, names = _many("lora", 3)
    with pytest.raises(AdapterStateError, match="active adapter"):
        model.pack_adapters(["a0"])
    with pytest.raises(AdapterStateError, match="no module adapter"):
        model.pack_adapters(["carol"])
    model.pack_adapters(["a1"])
    with pytest.raises(AdapterStateError, match="already holds"):
        model.add_adapter("a1", make_config("lora", "llama"))
    with pytest.raises(AdapterStateError, match="no row adapter"):
        model.unpack_adapters(["carol"])
    with pytest.raises(AdapterStateError, match="1 row adapter"):
        model(**_batch(2), adapter_names=["a0", "carol"])
    model.merge()
    with pytest.raises(AdapterStateError, match="merged"):
        model.pack_adapters(["a2"])
    with pytest.raises(AdapterStateError, match="merged model cannot serve"):
        model(**_batch(2), adapter_names=["a1", "a0"])
    model.unmerge()
    saved = adapt(llama(), make_config("lora", "llama", modules_to_save=["lm_head"]))
    saved.add_adapter("b", make_config("lora", "llama"))
    with pytest.raises(AdapterStateError, match="modules_to_save"):
        saved.pack_adapters(["b"])


def test_a_layer_serving_rows_only_stays_wrapped_and_unload_forgets_the_rows():
    model = adapt(llama(), make_config("tera", "llama"))
    model.add_adapter("mlp", VeRAConfig(r=4, target_modules=["up_proj"]))
    model.set_adapter("mlp")
    randomize_adapter(model, seed=5)
    model.set_adapter("default")
    batch = _batch(2)
    with torch.no_grad():
        expected = model(**batch, adapter_names=["mlp", "default"]).logits
    model.pack_adapters(["mlp"])
    up = [n for n in model.adapter_layers if "up_proj" in n]
    assert up and all(not model.adapter_layers[n].adapters for n in up)  # rows only
    with torch.no_grad():
        got = model(**batch, adapter_names=["mlp", "default"]).logits
        plain = model(**batch).logits  # no routing: those layers are the base
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(plain[1:], expected[1:], atol=ATOL, rtol=RTOL)
    model.delete_adapter("mlp")  # the row goes; the slot stays (the bank may get rows)
    base = model.unload()
    assert not model.adapter_rows.banks and len(model.adapter_rows) == 0
    assert not any(type(m).__name__ == "AdapterLinear" for m in base.modules())


def test_memory_table_grows_by_doubling_and_reuses_freed_rows():
    table = RowTable.memory(4)
    for i in range(9):
        assert table.append(torch.full((4,), float(i))) == i
    assert table.capacity == 16  # 8, then doubled
    table.free(3)
    assert table.append(torch.full((4,), 30.0)) == 3
    assert table.rows(torch.tensor([3, 8]))[:, 0].tolist() == [30.0, 8.0]


def test_row_layout_refuses_what_does_not_fit():
    layout = RowLayout.of({"a": (2,), "b": (1, 3)})
    ok = {"a": torch.ones(2), "b": torch.ones(1, 3)}
    assert torch.equal(layout.unflatten(layout.flatten(ok))["b"], ok["b"])
    with pytest.raises(LoadError, match="missing"):
        layout.flatten({"a": torch.ones(2)})
    with pytest.raises(LoadError, match="shape"):
        layout.flatten({"a": torch.ones(3), "b": torch.ones(1, 3)})
    with pytest.raises(LoadError, match="float64"):
        layout.flatten({"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(1, 3)})
    with pytest.raises(LoadError, match="NaN"):
        layout.flatten({"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(1, 3)})
    assert RowLayout.from_json(layout.to_json()) == layout
    assert layout.stride == 1024


def test_checksums_see_any_changed_word():
    rows = torch.randn(3, 50)
    sums = row_checksums(rows)
    changed = rows.clone()
    changed[1, 17] = torch.nextafter(changed[1, 17], torch.tensor(10.0))
    assert torch.equal(row_checksums(changed)[[0, 2]], sums[[0, 2]])
    assert row_checksums(changed)[1] != sums[1]
    swapped = rows.clone()
    swapped[2, [3, 4]] = rows[2, [4, 3]]
    assert row_checksums(swapped)[2] != sums[2]


def test_random_compositions_cost_no_state_and_stay_right():
    """Every call a new draw of adapters: outputs right, nothing kept per composition."""
    model, names = _many("vera", 24)
    model.pack_adapters(names[1:])
    batch = _batch(4, seed=9)
    g = torch.Generator().manual_seed(0)
    layer = next(iter(model.adapter_layers.values()))
    with torch.no_grad():
        for _ in range(25):
            draw = [names[1 + int(i)] for i in torch.randperm(23, generator=g)[:4]]
            model(**batch, adapter_names=draw)
        assert not layer.bank_cache
        draw = ["a7", "a19", "a3", "a11"]
        got = model(**batch, adapter_names=draw).logits
        model.unpack_adapters(draw)
        want = model(**batch, adapter_names=draw).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], atol=ATOL, rtol=RTOL)


def test_threads_calling_row_adapters_get_their_own_rows():
    model, names = _many("tera", 9)
    model.pack_adapters(names[1:])
    g = torch.Generator().manual_seed(1)
    calls = []
    for i in range(8):
        rows = 1 + i % 3
        ids = torch.randint(1, 100, (rows, 6), generator=g)
        draw = [names[1 + int(j)] for j in torch.randperm(8, generator=g)[:rows]]
        calls.append((ids, draw))
    with torch.no_grad():
        expected = [model(input_ids=ids, adapter_names=draw).logits for ids, draw in calls]
    failures: list[str] = []

    def worker(t: int) -> None:
        try:
            with torch.no_grad():
                for r in range(40):
                    i = (t + 3 * r) % len(calls)
                    got = model(input_ids=calls[i][0], adapter_names=calls[i][1]).logits
                    if not torch.allclose(got, expected[i], atol=ATOL, rtol=RTOL):
                        failures.append(f"thread {t} call {i}")
        except Exception as err:  # an error in a thread must fail the test
            failures.append(f"thread {t}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []


def test_lora_rows_in_a_mixed_batch_with_module_adapters():
    config = LoRAConfig(r=2, target_modules=["q_proj", "v_proj"])
    model = adapt(llama(), config, adapter_name="m")
    for name in ("r1", "r2"):
        model.add_adapter(name, config)
    for i, name in enumerate(["m", "r1", "r2"]):
        model.set_adapter(name)
        randomize_adapter(model, seed=20 + i)
    model.set_adapter("m")
    rows = ["r1", "m", "r2", "__base__"]
    batch = _batch(4, seed=4)
    with torch.no_grad():
        expected = model(**batch, adapter_names=rows).logits
        model.pack_adapters(["r1", "r2"])
        got = model(**batch, adapter_names=rows).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=ATOL, rtol=RTOL)


def test_a_failed_pack_or_unpack_leaves_the_adapter_where_it_was(monkeypatch):
    model, names = _many("lora", 3)
    batch = _batch(2)
    with torch.no_grad():
        before = model(**batch, adapter_names=["a1", "a2"]).logits

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(model, "delete_adapter", broken)
        with pytest.raises(RuntimeError):
            model.pack_adapters(["a1"])
    assert "a1" in model.adapter_names and "a1" not in model.adapter_rows
    model.pack_adapters(["a2"])
    with monkeypatch.context() as patch:
        patch.setattr(model, "adapter_parameters", broken)
        with pytest.raises(RuntimeError):
            model.unpack_adapters(["a2"])
    assert "a2" in model.adapter_rows and "a2" not in model.adapter_names
    with torch.no_grad():
        after = model(**batch, adapter_names=["a1", "a2"]).logits
    torch.testing.assert_close(after, before, atol=ATOL, rtol=RTOL)


def test_packing_refuses_factors_that_cannot_be_regenerated():
    model, names = _many("vera", 2)
    key = model.shared_factors.keys()[0]
    model.shared_factors.set(key, 2 * model.shared_factors.get(key))  # a PEFT VeRA's own
    with pytest.raises(AdapterStateError, match="regenerated from the seed"):
        model.pack_adapters(["a1"])


def test_row_and_module_adapters_are_saved_in_one_atomic_save(tmp_path):
    """A save that cannot write one module adapter writes no row adapter either (the rows
    used to be exported first, outside the transaction); a save that can writes both."""
    model, _ = _many("tera", 3)
    model.pack_adapters(["a1"])
    (tmp_path / "a2").write_text("a file where the folder of a2 goes")
    with pytest.raises(SaveError, match="a2"):
        model.save_pretrained(tmp_path, selected_adapters=["a1", "a2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a2"]
    (tmp_path / "a2").unlink()
    model.save_pretrained(tmp_path, selected_adapters=["a1", "a2"])
    other = adapt(llama(), make_config("tera", "llama"))
    for name in ("a1", "a2"):
        other.load_adapter(tmp_path / name, adapter_name=name)
    batch = _batch(2)
    with torch.no_grad():
        for name in ("a1", "a2"):
            want = model(**batch, adapter_names=[name, name]).logits
            got = other(**batch, adapter_names=[name, name]).logits
            torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)

"""Many named adapters on one model, and mixed batches (one adapter per row).

The law: row ``b`` of a mixed batch equals what the model gives with only adapter
``names[b]`` active (``"__base__"``: the base model), for a forward with padding and for
``generate`` with its KV cache. Tolerance 1e-5 (common.ATOL): the mixed path sums the same
products in another order (per-row scales between shared GEMMs, batched GEMMs) than the
single-adapter path, a few float32 ulps of the O(1) logits of these tiny models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tera.adapters import AdaptedModel, TeRAConfig, VeRAConfig, adapt, saving
from tera.errors import AdapterStateError, LoadError, ShapeError
from tests.adapters.common import (
    ATOL,
    KINDS,
    RTOL,
    llama,
    make_config,
    many_adapters,
    mlp,
    randomize_adapter,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from many_adapters import write_adapters  # the folders the 1,000-adapter benchmark loads

N_ADAPTERS = 64


def _many(kind: str, n: int = N_ADAPTERS) -> tuple[AdaptedModel, list[str]]:
    """A tiny Llama holding ``n`` adapters of ``kind`` (common.many_adapters)."""
    return many_adapters(kind, n)


def _padded_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with left padding of varied lengths (as batched generation pads)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, 9), generator=g)
    mask = torch.ones(rows, 9, dtype=torch.long)
    for b in range(rows):
        pad = b % 4
        mask[b, :pad] = 0
        ids[b, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _row_names(names: list[str], rows: int) -> list[str]:
    """Every adapter once, the base model on a few rows, then repeats."""
    out = list(names[:rows])
    for b in range(0, rows, 7):
        out[b] = "__base__"
    return out


@torch.no_grad()
def _reference(model: AdaptedModel, batch: dict[str, torch.Tensor], rows: list[str]):
    """Row b through the model with only adapter rows[b] active (or with none)."""
    expected = []
    for b, name in enumerate(rows):
        one = {k: v[b : b + 1] for k, v in batch.items()}
        if name == "__base__":
            with model.disable_adapter():
                expected.append(model(**one).logits)
        else:
            model.set_adapter(name)
            expected.append(model(**one).logits)
    model.set_adapter("a0")
    return torch.cat(expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_mixed_batch_gives_each_row_its_own_adapter(kind):
    """Banks in one pass ("push"), adapter by adapter ("materialize"), or as priced."""
    model, names = _many(kind)
    rows = _row_names(names, N_ADAPTERS)
    batch = _padded_batch(N_ADAPTERS)
    expected = _reference(model, batch, rows)
    mask = batch["attention_mask"].bool()
    for path in ("push", "materialize", "auto"):
        model.set_engine_path(path)
        with torch.no_grad():
            mixed = model(**batch, adapter_names=rows).logits
        torch.testing.assert_close(mixed[mask], expected[mask], atol=ATOL, rtol=RTOL, msg=path)
    # and the single-adapter path is untouched by a mixed call before it
    with torch.no_grad():
        plain = model(**batch).logits
        again = model(**batch, adapter_names=["a0"] * N_ADAPTERS).logits
    torch.testing.assert_close(again[mask], plain[mask], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_kv_cache_gives_each_row_its_own_adapter(kind):
    model, names = _many(kind)
    model.set_engine_path("push")  # the serving path: one pass per bank
    rows = _row_names(names, N_ADAPTERS)
    batch = _padded_batch(N_ADAPTERS, seed=3)
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    settings |= {"output_scores": True, "return_dict_in_generate": True}
    with torch.no_grad():
        mixed = model.generate(**batch, adapter_names=rows, **settings)
        # 64 adapters in the batch; every fifth row (base rows among them) checked alone
        for b in range(0, N_ADAPTERS, 5):
            name = rows[b]
            one = {k: v[b : b + 1] for k, v in batch.items()}
            if name == "__base__":
                with model.disable_adapter():
                    ref = model.generate(**one, **settings)
            else:
                model.set_adapter(name)
                ref = model.generate(**one, **settings)
            prompt = batch["input_ids"].shape[1]
            for step, (got, want) in enumerate(zip(mixed.scores, ref.scores, strict=True)):
                torch.testing.assert_close(
                    got[b], want[0], atol=ATOL, rtol=RTOL, msg=f"row {b} step {step}"
                )
                if mixed.sequences[b, prompt + step] != ref.sequences[0, prompt + step]:
                    # greedy decoding is discontinuous at a tie: scores within the tolerance
                    # may pick different tokens, and the continuations differ from there on
                    top2 = want[0].topk(2).values
                    assert float(top2[0] - top2[1]) < 10 * ATOL, f"row {b} step {step}"
                    break


def test_generate_repeats_names_for_beams():
    model, names = _many("tera", 3)
    batch = _padded_batch(3, seed=5)
    settings = {"max_new_tokens": 3, "num_beams": 2, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        mixed = model.generate(**batch, adapter_names=names, **settings)
        model.set_adapter("a2")
        alone = model.generate(**{k: v[2:] for k, v in batch.items()}, **settings)
    assert torch.equal(mixed[2], alone[0])


@pytest.mark.parametrize("path", ["push", "auto"])
@pytest.mark.parametrize("kind", ["tera", "vera", "lora"])
def test_mixed_batch_gradients_reach_each_rows_adapter_only(kind, path):
    model, names = _many(kind, 3)
    model.set_engine_path(path)
    batch = _padded_batch(4, seed=7)
    rows = ["a1", "a2", "a1", "__base__"]
    model(**batch, adapter_names=rows).logits.pow(2).mean().backward()
    mixed = {n: [p.grad.clone() for _, p in model.adapter_parameters(n)] for n in ("a1", "a2")}
    assert all(p.grad is None for _, p in model.adapter_parameters("a0"))
    for name, picked in (("a1", [0, 2]), ("a2", [1])):
        model.zero_grad()
        model.set_adapter(name)
        # the same loss, restricted to the rows of this adapter: mean over all 4 rows
        sub = {k: v[picked] for k, v in batch.items()}
        (model(**sub).logits.pow(2).sum() / model(**batch).logits.numel()).backward()
        for (pname, p), got in zip(model.adapter_parameters(name), mixed[name], strict=True):
            torch.testing.assert_close(got, p.grad, atol=1e-6, rtol=1e-4, msg=pname)


def test_frozen_factors_have_one_storage_and_each_adapter_costs_its_vectors():
    model, names = _many("tera", 5)
    for layer in model.adapter_layers.values():
        w0 = layer.base_weight()
        own = [{id(p) for p in layer.adapters[n].parameters()} for n in names]
        frozen = [
            [op.data_ptr() for op in layer.adapters[n].operands(w0) if id(op) not in own[i]]
            for i, n in enumerate(names)
        ]
        assert all(f == frozen[0] for f in frozen)
    d_bytes = sum(4 * sum(layer.adapters["a3"].ranks) for layer in model.adapter_layers.values())
    assert model.adapter_bytes("a3") == d_bytes
    assert len(model.shared_factors.keys()) == len(set(model.shared_factors.keys()))
    one = adapt(llama(), make_config("tera", "llama"))
    assert len(one.shared_factors.keys()) == len(model.shared_factors.keys())


def test_mixed_kinds_in_one_batch():
    model = adapt(llama(), make_config("tera", "llama"), adapter_name="t")
    model.add_adapter("h", make_config("hira", "llama"))
    model.add_adapter("v", make_config("vera", "llama"))
    model.add_adapter("l", make_config("lora", "llama"))
    for i, name in enumerate(["t", "h", "v", "l"]):
        model.set_adapter(name)
        randomize_adapter(model, seed=10 + i)
    rows = ["h", "t", "__base__", "l", "v", "t"]
    batch = _padded_batch(len(rows), seed=11)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=rows).logits
    model.set_adapter("t")
    expected = _reference(_Alias(model, "t"), batch, rows)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(mixed[mask], expected[mask], atol=ATOL, rtol=RTOL)


class _Alias:
    """The model with ``set_adapter("a0")`` meaning another first adapter (for _reference)."""

    def __init__(self, model: AdaptedModel, first: str) -> None:
        self._model, self._first = model, first

    def __call__(self, **kw):
        return self._model(**kw)

    def disable_adapter(self):
        return self._model.disable_adapter()

    def set_adapter(self, name: str) -> None:
        self._model.set_adapter(self._first if name == "a0" else name)


def test_adapters_on_other_layers_are_the_base_elsewhere():
    model = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj"]))
    model.add_adapter("mlp", VeRAConfig(r=8, target_modules=["up_proj"]))
    model.set_adapter("mlp")
    randomize_adapter(model, seed=4)
    assert {"default", "mlp"} == {
        n for layer in model.adapter_layers.values() for n in layer.adapters
    }
    batch = _padded_batch(2)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=["mlp", "default"]).logits
        only_mlp = model(**{k: v[:1] for k, v in batch.items()}).logits
    torch.testing.assert_close(mixed[:1], only_mlp, atol=ATOL, rtol=RTOL)
    model.delete_adapter("mlp")
    assert not any("up_proj" in n for n in model.adapter_layers)  # unwrapped again
    assert model.active_adapter == "default"


def test_bad_names_and_states_are_refused():
    model, names = _many("lora", 2)
    batch = _padded_batch(2)
    with pytest.raises(AdapterStateError, match="holds no adapter|does not hold"):
        model(**batch, adapter_names=["a0", "carol"])
    with pytest.raises(ShapeError, match="one name per row"):
        model(**batch, adapter_names=["a0"])
    with pytest.raises(AdapterStateError, match="list of adapter names"):
        model(**batch, adapter_names="a0")
    with pytest.raises(AdapterStateError, match="already holds"):
        model.add_adapter("a1", make_config("lora", "llama"))
    with pytest.raises(AdapterStateError, match="without dots"):
        model.add_adapter("__base__", make_config("lora", "llama"))
    with pytest.raises(AdapterStateError, match="holds no adapter"):
        model.set_adapter("carol")
    model.merge()
    with pytest.raises(AdapterStateError, match="merged model cannot serve a mixed batch"):
        model(**batch, adapter_names=["a0", "a1"])
    model.unmerge()
    model.delete_adapter("a0")
    assert model.active_adapter == "a1"
    with pytest.raises(AdapterStateError, match="only adapter"):
        model.delete_adapter("a1")


def test_save_all_and_load_each_under_a_name(tmp_path):
    model, names = _many("tera", 3)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() is False  # no adapter is "default"
    loaded = AdaptedModel.from_pretrained(llama(), tmp_path / "a1", adapter_name="a1")
    loaded.load_adapter(tmp_path / "a2", adapter_name="a2")
    batch = _padded_batch(2)
    with torch.no_grad():
        got = loaded(**batch, adapter_names=["a2", "a1"]).logits
        want = model(**batch, adapter_names=["a2", "a1"]).logits
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    # loaded adapters share the frozen factors as created ones do
    layer = next(iter(loaded.adapter_layers.values()))
    g1, g2 = (layer.adapters[n].operands(layer.base_weight())[0] for n in ("a1", "a2"))
    assert g1.data_ptr() == g2.data_ptr()


def test_an_adapter_that_does_not_fit_is_refused_and_the_others_stay(tmp_path):
    model, names = _many("tera", 2)
    other = adapt(llama(), TeRAConfig(in_mode=32, out_mode=32, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "other-scheme")
    with torch.no_grad():
        before = model(**_padded_batch(2), adapter_names=names).logits
    wide = adapt(llama(vocab_size=100), make_config("tera", "llama"))
    wide.save_pretrained(tmp_path / "ok")
    (tmp_path / "ok" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoadError, match="corrupted"):
        model.load_adapter(tmp_path / "ok", adapter_name="broken")
    assert model.adapter_names == names
    elsewhere = adapt(mlp(), make_config("tera", "mlp"))
    elsewhere.save_pretrained(tmp_path / "mlp")
    with pytest.raises(LoadError, match="which this model does not have"):
        model.load_adapter(tmp_path / "mlp", adapter_name="mlp")
    assert model.adapter_names == names
    model.load_adapter(tmp_path / "other-scheme", adapter_name="q_only")
    assert model.adapter_names == [*names, "q_only"]
    with torch.no_grad():
        after = model(**_padded_batch(2), adapter_names=names).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_a_thousand_adapters_cost_their_vectors_only(tmp_path):
    config = make_config("tera", "llama")
    template = adapt(llama(), config)
    folders = write_adapters(template, tmp_path, 1000)
    model = adapt(llama(), config)
    factor_bytes = sum(t.numel() * t.element_size() for _, t in model.shared_factors.items())
    for i, folder in enumerate(folders):
        model.load_adapter(folder, adapter_name=f"u{i}")
    assert len(model.adapter_names) == 1001
    # the frozen factors did not grow: one storage for all 1,001 adapters
    assert sum(t.numel() * t.element_size() for _, t in model.shared_factors.items()) == (
        factor_bytes
    )
    per_adapter = template.adapter_bytes()
    own = sum(
        p.numel() * p.element_size()
        for layer in model.adapter_layers.values()
        for p in layer.adapters.parameters()
    )
    assert own == 1001 * per_adapter
    # an adapter whose tensors do not fit its scheme, or whose layers the model lacks, is
    # refused at load; the others stay usable
    from tera.adapters import io

    meta = saving.adapter_meta(template, False, "default")
    bad = {k: torch.ones(3) for k in saving.adapter_state(template, False, "default")}
    io.write_adapter(tmp_path / "bad-shapes", meta, bad)
    with pytest.raises(LoadError, match="has shape"):
        model.load_adapter(tmp_path / "bad-shapes", adapter_name="bad")
    elsewhere = adapt(mlp(), make_config("tera", "mlp"))
    elsewhere.save_pretrained(tmp_path / "mlp")
    with pytest.raises(LoadError, match="does not have"):
        model.load_adapter(tmp_path / "mlp", adapter_name="bad")
    assert "bad" not in model.adapter_names and len(model.adapter_names) == 1001
    rows = ["u999", "u0", "__base__", "u512"]
    batch = _padded_batch(4, seed=2)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=rows).logits
    expected = _reference(_Alias(model, "default"), batch, rows)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(mixed[mask], expected[mask], atol=ATOL, rtol=RTOL)


def test_the_bank_cache_is_bounded_and_sees_updated_tensors():
    from tera.adapters.batch import BANK_CACHE

    model, names = _many("tera", 12)
    model.set_engine_path("push")
    batch = _padded_batch(2)
    layer = next(iter(model.adapter_layers.values()))
    with torch.no_grad():
        for i in range(BANK_CACHE + 3):  # more compositions than the cache holds
            model(**batch, adapter_names=[names[i], names[i + 1]])
        assert sum(k[0] == "bank" for k in layer.bank_cache) == BANK_CACHE
        before = model(**batch, adapter_names=["a1", "a2"]).logits
        model.set_adapter("a2")
        randomize_adapter(model, seed=99)  # in place: the cached bank must not be reused
        after = model(**batch, adapter_names=["a1", "a2"]).logits
        alone = model(**{k: v[1:] for k, v in batch.items()}).logits
    torch.testing.assert_close(before[:1], after[:1], atol=0, rtol=0)
    torch.testing.assert_close(after[1:], alone, atol=ATOL, rtol=RTOL)


def test_a_bank_runs_in_one_pass_unless_materializing_pays():
    """Decoding (a token per row, many adapters): one pass; a long prefill of one: alone."""
    from torch import nn

    from tera.adapters.batch import RowAdapters, plan_banks, runs_one_by_one

    config = TeRAConfig(in_mode=64, out_mode=4, target_modules=["0"])
    model = adapt(nn.Sequential(nn.Linear(64, 64)), config, adapter_name="a0")
    for i in range(1, 64):
        model.add_adapter(f"a{i}", config)
    layer = model.adapter_layers["0"]
    names = [f"a{i}" for i in range(64)]
    with torch.no_grad():
        decode = RowAdapters.from_names(names)
        positions, bank_names, _ = plan_banks(layer, decode)[0]
        x = torch.randn(64, 1, 64)
        assert not runs_one_by_one(layer, decode, bank_names, positions, x)
        prefill = RowAdapters.from_names(["a0", "a0"])
        positions, bank_names, _ = plan_banks(layer, prefill)[0]
        x = torch.randn(2, 4096, 64)
        assert runs_one_by_one(layer, prefill, bank_names, positions, x)

"""TeRA as a PEFT method: PEFT's own entry points against ``tera.adapters.adapt``.

The PEFT model runs tera's own layer (``AdapterLinear``), adapter modules, factors and kernel,
so given the same d's its outputs are compared to ``adapt``'s for exact equality (the same
operations in the same order); the same holds for mixed batches and merged weights. A mixed
batch against single-adapter runs, and merged against unmerged outputs, differ in summation
order only: those use ``common.ATOL`` (1e-5, see tests/adapters/common.py).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import threading

import peft
import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model, inject_adapter_in_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType
from safetensors.torch import load_file, save_file
from torch import nn

from tera.adapters import TeRAConfig, adapt
from tera.errors import (
    AdapterStateError,
    BackendError,
    ConfigError,
    DependencyError,
    FingerprintError,
    LoadError,
    MergeError,
)
from tera.integrations import peft as tera_peft
from tera.integrations.peft import TERA, TeraConfig, TeraLayer, TeraModel
from tests.adapters.common import ATOL, RTOL, llama

TARGETS = ["q_proj", "v_proj"]


def _config(**extra) -> TeraConfig:
    fields = {"in_mode": 32, "out_mode": 2, "target_modules": TARGETS, "task_type": "CAUSAL_LM"}
    return TeraConfig(**{**fields, **extra})


def _ids(seed: int = 1, rows: int = 3) -> torch.Tensor:
    return torch.randint(0, 100, (rows, 7), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits without autograd: the engine's path choice also weighs the backward pass, so
    models compared for equality must both run with or both without it."""
    return model(input_ids=ids, **kwargs).logits


def _peft_key(tera_key: str, adapter: str = "default") -> str:
    """``layers.0.self_attn.q_proj.adapter.d.0`` (tera) as the PEFT model's parameter name."""
    layer, _, param = tera_key.partition(".adapter.")
    return f"base_model.model.{layer}.tera_adapters.{adapter}.{param}"


def _random_ds(model, seed: int) -> dict[str, torch.Tensor]:
    """Random d's written into a tera ``AdaptedModel`` (returned by tera name)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for name, p in model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
            out[name] = p.detach().clone()
    return out


def _copy_into_peft(peft_model, ds: dict[str, torch.Tensor], adapter: str = "default") -> None:
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, value in ds.items():
            params[_peft_key(name, adapter)].copy_(value)


@pytest.fixture
def pair():
    """A tera model and a PEFT model of the same base, with the same random d's."""
    tera_model = adapt(llama(), _config().to_tera())
    ds = _random_ds(tera_model, seed=3)
    peft_model = get_peft_model(llama(), _config())
    _copy_into_peft(peft_model, ds)
    return tera_model, peft_model, ds


# -- registration -------------------------------------------------------------------------------
def test_tera_is_a_peft_method_after_import():
    assert TERA is PeftType.TERA is PeftType("TERA")
    assert "TERA" in list(PeftType) and TERA == "TERA"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[TERA] is TeraConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[TERA] is TeraModel
    assert tera_peft._add_peft_type("TERA") is TERA  # added once: a second call finds it
    tera_peft._register()  # registering again is a no-op, not PEFT's "already a method" error
    assert TeraConfig().peft_type is TERA


def test_an_untested_peft_is_refused_with_our_error():
    tera_peft._check_peft_version(peft.__version__)  # the installed one is tested
    with pytest.raises(DependencyError, match=r"PEFT 0\.99\.0 is installed.*pip install"):
        tera_peft._check_peft_version("0.99.0")
    assert issubclass(DependencyError, ImportError)


def test_without_peft_the_import_says_what_to_install(monkeypatch):
    # the module's file run under another name, with PEFT hidden: it stops at `import peft`,
    # before touching anything of PEFT's
    monkeypatch.setitem(sys.modules, "peft", None)
    spec = importlib.util.spec_from_file_location("tera_peft_without_peft", tera_peft.__file__)
    with pytest.raises(DependencyError, match=r"pip install 'tera\[peft\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_the_config_validates_with_teras_errors_and_round_trips(tmp_path):
    with pytest.raises(ConfigError, match="in_mode"):
        TeraConfig(in_mode=1)
    with pytest.raises(ConfigError, match="factors"):
        TeraConfig(factors="bogus")
    config = TeraConfig(
        in_mode=8, out_mode=4, in_modes={32: (4, 8)}, ranks=[4, 4, 2, 2], zero_init=0, seed=5
    )
    tera_config = config.to_tera()
    assert isinstance(tera_config, TeRAConfig)
    assert tera_config.in_modes == {32: (4, 8)} and tera_config.ranks == (4, 4, 2, 2)
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, TeraConfig) and loaded.peft_type is TERA
    assert loaded.to_tera() == tera_config  # JSON's string keys come back as sizes
    assert TeraConfig(target_modules={"v_proj", "q_proj"}).target_modules == ["q_proj", "v_proj"]
    assert TeraConfig(target_modules=None).to_tera().target_modules == TeRAConfig().target_modules


# -- the same model as tera.adapters.adapt ------------------------------------------------------
def test_get_peft_model_computes_what_adapt_computes(pair, capsys):
    tera_model, peft_model, _ = pair
    ids = _ids()
    assert torch.equal(_logits(peft_model, ids), _logits(tera_model, ids))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {_peft_key(n) for n, _ in tera_model.adapter_parameters()}
    peft_model.print_trainable_parameters()
    tera_model.print_trainable_parameters()
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == lines[1] == "trainable params: 164 || all params: 25,156 || trainable%: 0.6519"
    )
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, TeraLayer)
    tera_layer = tera_model.adapter_layers["model.layers.0.self_attn.q_proj"]
    assert torch.equal(layer.get_delta_weight("default"), tera_layer.delta_weight())


def test_gradients_reach_the_ds_as_in_adapt(pair):
    tera_model, peft_model, _ = pair
    ids = _ids()
    peft_model.train()
    tera_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    tera_model(input_ids=ids, labels=ids).loss.backward()
    params = dict(peft_model.named_parameters())
    for name, p in tera_model.adapter_parameters():
        assert p.grad is not None and torch.equal(params[_peft_key(name)].grad, p.grad)
    assert all(p.grad is None for n, p in params.items() if "tera_adapters" not in n)


def test_the_frozen_factors_are_shared_by_storage(pair):
    _, peft_model, _ = pair
    layers = [m for m in peft_model.modules() if isinstance(m, TeraLayer)]
    assert len(layers) == 4 and len({id(m.tera_factors) for m in layers}) == 1
    q0, q1 = (peft_model.base_model.model.model.layers[i].self_attn.q_proj for i in (0, 1))
    g0 = q0.engine.adapter.operands(q0.engine.base_weight())[0]
    g1 = q1.engine.adapter.operands(q1.engine.base_weight())[0]
    assert g0.data_ptr() == g1.data_ptr()  # one core G for both layers of that shape
    assert not any("tera_factors" in k for k in peft_model.state_dict())  # regenerated, not saved


def test_inject_adapter_in_model_works_too(pair):
    # the shared factors live on the layers, so PEFT's direct injection (which returns only the
    # model) keeps them: uses_shared_state is False
    tera_model, _, ds = pair
    model = inject_adapter_in_model(_config(), llama())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ds.items():
            params[_peft_key(name).removeprefix("base_model.model.")].copy_(value)
    ids = _ids()
    assert torch.equal(_logits(model, ids), _logits(tera_model, ids))


# -- saving and loading -------------------------------------------------------------------------
def test_save_pretrained_and_from_pretrained_round_trip(pair, tmp_path):
    _, peft_model, _ = pair
    ids = _ids()
    expected = _logits(peft_model, ids)
    peft_model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["peft_type"] == "TERA" and meta["in_mode"] == 32
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    digest = tensors.pop(tera_peft.FINGERPRINT)
    assert bytes(digest.tolist()).hex() == tera_peft._factor_fingerprint(peft_model, "default")
    assert len(tensors) == 22 and all(".tera_adapters.d." in k for k in tensors)  # no name
    loaded = PeftModel.from_pretrained(llama(), tmp_path)
    assert isinstance(loaded.base_model, TeraModel)
    assert torch.equal(_logits(loaded, ids), expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # PEFT's inference default
    # the same folder as a second adapter under another name
    loaded.load_adapter(tmp_path, adapter_name="again")
    loaded.set_adapter("again")
    assert torch.equal(_logits(loaded, ids), expected)


def _saved(peft_model, tmp_path):
    peft_model.save_pretrained(tmp_path)
    return tmp_path / "adapter_model.safetensors", tmp_path / "adapter_config.json"


def test_loading_refuses_other_factors(pair, tmp_path):
    _, peft_model, _ = pair
    weights, _ = _saved(peft_model, tmp_path)
    good = load_file(weights)
    other = good[tera_peft.FINGERPRINT].clone()
    other[0] ^= 1  # the fingerprint of other factors
    save_file({**good, tera_peft.FINGERPRINT: other}, weights)
    with pytest.raises(FingerprintError, match="regenerated from seed 0"):
        PeftModel.from_pretrained(llama(), tmp_path)
    save_file({k: v for k, v in good.items() if k != tera_peft.FINGERPRINT}, weights)
    with pytest.raises(FingerprintError, match="no readable"):
        PeftModel.from_pretrained(llama(), tmp_path)


def test_loading_refuses_non_finite_missing_or_mis_shaped_ds(pair, tmp_path):
    _, peft_model, _ = pair
    weights, _ = _saved(peft_model, tmp_path)
    good = load_file(weights)
    first = sorted(k for k in good if ".tera_adapters." in k)[0]
    save_file({**good, first: torch.full_like(good[first], float("nan"))}, weights)
    with pytest.raises(LoadError, match="NaN or inf"):
        PeftModel.from_pretrained(llama(), tmp_path)
    save_file({k: v for k, v in good.items() if k != first}, weights)
    with pytest.raises(LoadError, match="missing"):
        PeftModel.from_pretrained(llama(), tmp_path)
    save_file({**good, first: torch.ones(3)}, weights)
    with pytest.raises(LoadError, match="shape"):
        PeftModel.from_pretrained(llama(), tmp_path)
    extra = first.replace("layers.0", "layers.7")
    save_file({**good, extra: good[first].clone()}, weights)
    with pytest.raises(LoadError, match="unexpected"):
        PeftModel.from_pretrained(llama(), tmp_path)


def test_low_cpu_mem_usage_is_refused_with_our_error(pair, tmp_path):
    _, peft_model, _ = pair
    _saved(peft_model, tmp_path)
    with pytest.raises(BackendError, match="low_cpu_mem_usage"):
        PeftModel.from_pretrained(llama(), tmp_path, low_cpu_mem_usage=True)


# -- merging ------------------------------------------------------------------------------------
def test_merge_and_unload_writes_the_weights_adapt_writes(pair):
    tera_model, peft_model, _ = pair
    ids = _ids()
    unmerged = _logits(peft_model, ids)
    merged = peft_model.merge_and_unload()
    reference = tera_model.merge_and_unload()
    assert not any(isinstance(m, TeraLayer) for m in merged.modules())
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    for (name, a), (_, b) in zip(
        merged.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    torch.testing.assert_close(_logits(merged, ids), unmerged, atol=ATOL, rtol=RTOL)


def test_merge_adapter_and_unmerge_adapter(pair):
    _, peft_model, _ = pair
    ids = _ids()
    before = _logits(peft_model, ids)
    weight = peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = weight.detach().clone()
    peft_model.merge_adapter()
    assert not torch.equal(weight, original)
    torch.testing.assert_close(_logits(peft_model, ids), before, atol=ATOL, rtol=RTOL)
    peft_model.merge_adapter()  # merging again is a no-op (nothing left to merge)
    with pytest.raises(AdapterStateError, match="merged model cannot serve a mixed batch"):
        peft_model.eval()(input_ids=ids, adapter_names=["default"] * 3)
    peft_model.unmerge_adapter()
    torch.testing.assert_close(weight, original, atol=ATOL, rtol=RTOL)
    with pytest.warns(UserWarning, match="Already unmerged"):
        peft_model.base_model.model.model.layers[0].self_attn.q_proj.unmerge()
    with peft_model.disable_adapter():
        base = _logits(peft_model, ids)
    plain = peft_model.unload()  # PEFT's unload: the base layers back, unmerged
    assert not any(isinstance(m, TeraLayer) for m in plain.modules())
    assert torch.equal(_logits(plain, ids), base)

    broken = get_peft_model(llama(), _config())
    with torch.no_grad():
        q = broken.base_model.model.model.layers[0].self_attn.q_proj
        q.tera_adapters["default"].d[0].fill_(float("inf"))
        q.tera_adapters["default"].d[-1].fill_(1.0)
    with pytest.raises(MergeError):
        broken.merge_adapter()


# -- several adapters and mixed batches ---------------------------------------------------------
@pytest.fixture
def two_adapters():
    """tera and PEFT models holding adapters "a" (default) and "b" with the same random d's."""
    tera_model = adapt(llama(), _config().to_tera(), adapter_name="a")
    tera_model.add_adapter("b", _config().to_tera())
    peft_model = get_peft_model(llama(), _config(), adapter_name="a")
    peft_model.add_adapter("b", _config())
    g = torch.Generator().manual_seed(11)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for adapter in ("a", "b"):
            for name, p in tera_model.adapter_parameters(adapter):
                p.copy_(torch.randn(p.shape, generator=g))
                params[_peft_key(name, adapter)].copy_(p)
    return tera_model.eval(), peft_model.eval()


ROWS = ["b", "__base__", "a", "b"]


def test_a_mixed_batch_matches_adapts_mixed_batch_and_each_adapter_alone(two_adapters):
    tera_model, peft_model = two_adapters
    ids = _ids(rows=len(ROWS))
    mixed = _logits(peft_model, ids, adapter_names=ROWS)
    assert torch.equal(mixed, _logits(tera_model, ids, adapter_names=ROWS))
    alone = {}
    for name in ("a", "b"):
        peft_model.set_adapter(name)
        alone[name] = _logits(peft_model, ids)
        rows = [i for i, n in enumerate(ROWS) if n == name]
        torch.testing.assert_close(mixed[rows], alone[name][rows], atol=ATOL, rtol=RTOL)
    with peft_model.disable_adapter():
        base = _logits(peft_model, ids)
    assert torch.equal(mixed[1], base[1])
    # the routing was for that call only: a plain call runs the active adapter on every row
    peft_model.set_adapter("a")
    assert torch.equal(_logits(peft_model, ids), alone["a"])


def test_generate_with_adapter_names_matches_adapt(two_adapters):
    tera_model, peft_model = two_adapters
    ids = _ids(rows=len(ROWS))
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    ours = peft_model.generate(input_ids=ids, adapter_names=ROWS, **settings)
    assert torch.equal(ours, tera_model.generate(input_ids=ids, adapter_names=ROWS, **settings))


def test_bad_adapter_names_get_our_errors(two_adapters):
    _, peft_model = two_adapters
    ids = _ids(rows=2)
    with pytest.raises(AdapterStateError, match=r"\['nobody'\]"):
        peft_model(input_ids=ids, adapter_names=["a", "nobody"])
    with pytest.raises(AdapterStateError, match="one per row"):
        peft_model(input_ids=ids, adapter_names="a")
    for bad in ("x.y", "__base__"):
        with pytest.raises(AdapterStateError, match="adapter_name must be"):
            peft_model.add_adapter(bad, _config())
        assert bad not in peft_model.peft_config  # PEFT rolled the config back
    with pytest.raises(AdapterStateError, match="adapter_name must be"):
        get_peft_model(llama(), _config(), adapter_name="__base__")
    with pytest.raises(AdapterStateError, match="one active adapter"):
        peft_model.base_model.set_adapter(["a", "b"])
    with pytest.raises(AdapterStateError, match="one active adapter"):
        peft_model.base_model.model.model.layers[0].self_attn.q_proj.set_adapter(["a", "b"])
    peft_model.train()
    with pytest.raises(AdapterStateError, match="eval"):
        peft_model(input_ids=ids, adapter_names=["a", "b"])


def test_concurrent_mixed_batches_do_not_mix(two_adapters):
    # Two threads run different mixed batches at once: a barrier in the first layer holds
    # each call until the other has started, so both routings are live at the same time.
    _, peft_model = two_adapters
    ids = _ids(rows=2)
    batches = {0: ["a", "b"], 1: ["b", "__base__"]}
    expected = {k: _logits(peft_model, ids, adapter_names=v) for k, v in batches.items()}
    barrier = threading.Barrier(2, timeout=30)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj

    def meet(*_) -> None:
        barrier.wait()  # returns the arrival index, which a pre-hook must not return

    handle = layer.register_forward_pre_hook(meet)
    got: dict[int, torch.Tensor] = {}

    def run(k: int) -> None:
        got[k] = _logits(peft_model, ids, adapter_names=batches[k])

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        handle.remove()
    assert sorted(got) == [0, 1]
    for k in batches:
        assert torch.equal(got[k], expected[k])


def test_modules_to_save_follow_the_rows_of_a_mixed_batch(tmp_path):
    # a small MLP whose head "2" is trained per adapter (PEFT's ModulesToSaveWrapper)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    config = {"in_mode": 4, "out_mode": 4, "target_modules": ["0"], "modules_to_save": ["2"]}
    model = get_peft_model(mlp, TeraConfig(**config), adapter_name="a")
    model.add_adapter("b", TeraConfig(**config))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".a." in name or ".b." in name:
                p.copy_(torch.randn(p.shape, generator=g))
    model.eval()
    x = torch.randn(3, 16, generator=g)
    mixed = model(x, adapter_names=["b", "a", "b"])
    for name, rows in (("a", [1]), ("b", [0, 2])):
        model.set_adapter(name)
        torch.testing.assert_close(mixed[rows], model(x)[rows], atol=ATOL, rtol=RTOL)
    heads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert heads and all("tera_adapters.b" in n or "modules_to_save.b" in n for n in heads)
    # the heads are saved with their adapter and come back with it
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "b", adapter_name="b")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_delete_adapter_leaves_the_other(two_adapters):
    _, peft_model = two_adapters
    ids = _ids(rows=2)
    peft_model.set_adapter("b")
    expected = _logits(peft_model, ids)
    peft_model.delete_adapter("a")
    assert peft_model.peft_config.keys() == {"b"}
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert list(layer.tera_adapters) == ["b"] and list(layer.engine.adapters) == ["b"]
    assert torch.equal(_logits(peft_model, ids), expected)


# -- the rest of PEFT's interface ---------------------------------------------------------------
def test_default_and_regex_targets():
    model = get_peft_model(llama(), TeraConfig(in_mode=32, out_mode=2, target_modules=None))
    names = {n for n, m in model.named_modules() if isinstance(m, TeraLayer)}
    assert names and all(n.endswith(("q_proj", "v_proj")) for n in names)  # the paper's q and v
    regex = TeraConfig(in_mode=32, out_mode=2, target_modules=r".*\.0\.self_attn\.q_proj")
    assert regex.to_tera().target_modules == regex.target_modules
    model = get_peft_model(llama(), regex)
    names = [n for n, m in model.named_modules() if isinstance(m, TeraLayer)]
    assert names == ["base_model.model.model.layers.0.self_attn.q_proj"]
    with pytest.raises(TypeError, match="TeraConfig"):
        model.base_model._create_and_replace(peft.LoraConfig(), "x", None, "q", None, "q")


def test_an_adapter_on_other_layers_joins_untrained_and_saves_alone(tmp_path):
    model = get_peft_model(llama(), _config(target_modules=["q_proj"]), adapter_name="a")
    model.add_adapter("b", _config(target_modules=["v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".q_proj.tera_adapters.a." in n for n in trainable)
    model.save_pretrained(tmp_path, selected_adapters=["b"])
    keys = set(load_file(tmp_path / "b" / "adapter_model.safetensors")) - {tera_peft.FINGERPRINT}
    assert keys and all(".v_proj.tera_adapters.d." in k for k in keys)
    loaded = PeftModel.from_pretrained(llama(), tmp_path / "b", adapter_name="b")
    model.set_adapter("b")
    ids = _ids()
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    model.delete_adapter("b")  # v_proj layers held only "b"
    assert all(not m.tera_adapters for n, m in model.named_modules() if n.endswith("v_proj"))


def test_a_layer_takes_adapter_names_as_a_keyword(two_adapters):
    _, peft_model = two_adapters
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mixed = layer(x, adapter_names=["b", "__base__"])
        peft_model.set_adapter("b")
        alone = layer(x)
        base = layer.base_layer(x)
    torch.testing.assert_close(mixed[0], alone[0], atol=ATOL, rtol=RTOL)
    assert torch.equal(mixed[1], base[1])
    with pytest.raises(AdapterStateError, match="merges one adapter"):
        layer.merge(adapter_names=["a", "b"])


def test_disabling_a_merged_model_unmerges_it(pair):
    _, peft_model, _ = pair
    ids = _ids()
    with peft_model.disable_adapter():
        base = _logits(peft_model, ids)
    peft_model.merge_adapter()
    with peft_model.disable_adapter():  # unmerging subtracts dW again: equal up to rounding
        torch.testing.assert_close(_logits(peft_model, ids), base, atol=ATOL, rtol=RTOL)
    assert not any(m.merged for m in peft_model.modules() if isinstance(m, TeraLayer))


def test_a_model_on_the_meta_device_gets_its_adapter_without_memory():
    with torch.device("meta"):
        base = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    model = get_peft_model(base, TeraConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    ds = [p for n, p in model.named_parameters() if "tera_adapters" in n]
    assert ds and all(p.is_meta for p in ds)


def test_a_deep_copy_is_an_independent_model(pair):
    # TRL copies a policy into its reference model with copy.deepcopy: the engine each TeRA
    # layer keeps beside its registered modules must follow the copy, not the original
    _, peft_model, _ = pair
    ids = _ids()
    twin = copy.deepcopy(peft_model)
    layer = twin.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.engine.base_layer is layer.base_layer
    assert layer.engine.adapters is layer.tera_adapters
    assert torch.equal(_logits(twin, ids), _logits(peft_model, ids))
    with torch.no_grad():
        layer.tera_adapters["default"].d[-1].zero_()
    original = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert bool(original.tera_adapters["default"].d[-1].abs().sum() > 0)
    assert not torch.equal(_logits(twin, ids), _logits(peft_model, ids))

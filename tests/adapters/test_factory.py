"""The factory and save format: targets, bad input, loading safety, HF specifics."""

import json
import os

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from tera.adapters import (
    HiRAConfig,
    LoRAConfig,
    TeRAConfig,
    VeRAConfig,
    adapt,
    config_from_dict,
    find_targets,
    from_pretrained,
    parameter_report,
    trace_paths,
)
from tera.adapters.engine import choose_path
from tera.cli import BUNDLED_CONFIGS
from tera.errors import (
    AdapterStateError,
    DTypeError,
    FingerprintError,
    LoadError,
    MergeError,
    TargetError,
)
from tests.adapters.common import (
    ATOL,
    RTOL,
    bert,
    edit_meta,
    inputs,
    llama,
    make_config,
    mlp,
    randomize_adapter,
    run,
)


def test_target_modules_as_names_suffixes_and_regex():
    names = lambda t: [n for n, _ in find_targets(llama(), t)]  # noqa: E731
    by_suffix = names(["q_proj"])
    assert by_suffix == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert names(["model.layers.0.self_attn.q_proj"]) == by_suffix[:1]
    assert names(r"model\.layers\.1\.self_attn\.(q|v)_proj") == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    with pytest.raises(TargetError, match="matched no module"):
        names(["q"])


def test_unmatched_targets_list_the_linear_layers():
    with pytest.raises(TargetError) as err:
        adapt(llama(), LoRAConfig(target_modules=["query"]))
    msg = str(err.value)
    for suffix in (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ):
        assert suffix in msg


def test_non_linear_targets_are_rejected():
    with pytest.raises(
        TargetError,
        match=r"'model.layers.0.self_attn' is a LlamaAttention; adapters wrap torch.nn.Linear",
    ):
        adapt(llama(), LoRAConfig(target_modules=r"model\.layers\.0\.self_attn"))
    with pytest.raises(TargetError, match=r"is a Embedding"):
        adapt(llama(), LoRAConfig(target_modules=["embed_tokens"]))


def test_adapting_twice_is_an_error():
    model = adapt(llama(), make_config("lora", "llama"))
    with pytest.raises(AdapterStateError, match="already carries an adapter; call unload"):
        adapt(model.base_model, make_config("tera", "llama"))


def test_merge_state_errors():
    model = adapt(mlp(), make_config("lora", "mlp"))
    with pytest.raises(AdapterStateError, match="not merged"):
        model.unmerge()
    model.merge()
    with pytest.raises(AdapterStateError, match="already merged"):
        model.merge()
    hira = adapt(mlp(), make_config("hira", "mlp"))
    layer = hira.adapter_layers["0"]
    layer.merge(keep_original=False)
    with pytest.raises(AdapterStateError, match="cannot be unmerged exactly"):
        layer.unmerge()


def test_nan_in_adapter_refuses_to_merge():
    model = adapt(mlp(), make_config("lora", "mlp"))
    layer = model.adapter_layers["0"]
    before = layer.base_weight().clone()
    with torch.no_grad():
        layer.adapter.B[0, 0] = float("nan")
    with pytest.raises(MergeError, match=r"NaN/inf .* \(dW holds non-finite values; check"):
        model.merge()
    assert torch.equal(layer.base_weight(), before) and not layer.merged


def test_integer_weights_are_rejected():
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight = nn.Parameter(torch.zeros(4, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(DTypeError, match="torch.int32 weights; adapters need floating"):
        adapt(model, LoRAConfig(target_modules=["0"]))


def test_engine_path_validation():
    model = adapt(mlp(), make_config("lora", "mlp"))
    with pytest.raises(ValueError, match="path must be 'auto', 'materialize' or 'push'"):
        model.set_engine_path("fast")


def test_engine_picks_push_for_few_tokens_and_materialize_for_many():
    model = adapt(
        nn.Sequential(nn.Linear(256, 256)),
        TeRAConfig(in_mode=256, out_mode=4, target_modules=["0"]),
    )
    layer = model.adapter_layers["0"]
    net = layer.adapter.network(layer.base_weight())
    assert choose_path(net, tokens=1, fused=True) == "push"
    assert choose_path(net, tokens=65536, fused=True) == "materialize"
    with trace_paths() as few:
        model(torch.randn(1, 256))
    with trace_paths() as many:
        model(torch.randn(8, 1024, 256))
    assert (few[layer], many[layer]) == ("push", "materialize")


def _saved(tmp_path, kind="tera"):
    model = adapt(llama(), make_config(kind, "llama"))
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    return model


def test_loading_into_other_shapes_fails(tmp_path):
    _saved(tmp_path)
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(
        LoadError,
        match=r"layer 'model.layers.0.self_attn.q_proj' is 64 -> 64 in this model but 32 -> 32",
    ):
        from_pretrained(other, tmp_path)
    with pytest.raises(
        LoadError, match=r"adapts 'model.layers.0.self_attn.q_proj', which this model does not have"
    ):
        from_pretrained(mlp(), tmp_path)


def test_missing_and_corrupted_files(tmp_path):
    _saved(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="cannot be read .* corrupted or truncated"):
        from_pretrained(llama(), tmp_path)
    weights.unlink()
    with pytest.raises(LoadError, match="no adapter_model.safetensors"):
        from_pretrained(llama(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(LoadError, match="is not valid JSON"):
        from_pretrained(llama(), tmp_path)
    (tmp_path / "adapter_config.json").unlink()
    with pytest.raises(LoadError, match="no adapter_config.json"):
        from_pretrained(llama(), tmp_path)


def test_newer_format_is_refused(tmp_path):
    _saved(tmp_path)
    edit_meta(tmp_path, format_version=99)
    with pytest.raises(
        LoadError, match="format_version 99 but this tera reads up to 1; upgrade tera"
    ):
        from_pretrained(llama(), tmp_path)


def test_fingerprint_mismatch_is_refused_and_leaves_the_model_clean(tmp_path):
    _saved(tmp_path)
    edit_meta(tmp_path, factor_fingerprint="0" * 64)
    model = llama()
    with pytest.raises(
        FingerprintError, match="regenerated from seed 0 do not match the fingerprint"
    ):
        from_pretrained(model, tmp_path)
    assert not any("tera_factors" in n for n, _ in model.named_modules())
    adapt(model, make_config("lora", "llama"))  # the failed load left no adapter behind


def test_changed_generator_is_caught(tmp_path, monkeypatch):
    _saved(tmp_path)
    import tera.adapters.factors as factors

    original = factors.counter_uniform

    def drifted(key, shape, bound):  # a future generator that differs in one value
        out = original(key, shape, bound)
        out.view(-1)[0] += 1e-3
        return out

    monkeypatch.setattr("tera.adapters.tera.counter_uniform", drifted)
    with pytest.raises(FingerprintError):
        from_pretrained(llama(), tmp_path)


def test_factors_can_be_saved_and_are_then_used(tmp_path, monkeypatch):
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model)
    batch = inputs("llama")
    with torch.no_grad():  # the loaded adapter is for inference: same engine path
        expected = run(model, "llama", batch)
    model.save_pretrained(tmp_path, include_factors=True)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["includes_factors"] is True
    import tera.adapters.factors as factors

    original = factors.counter_uniform
    monkeypatch.setattr(
        "tera.adapters.tera.counter_uniform", lambda k, s, bound: original(k, s, bound) * 2
    )
    loaded = from_pretrained(llama(), tmp_path)  # factors come from the file, not the generator
    assert torch.equal(run(loaded, "llama", batch), expected)


def test_unknown_kinds_and_fields():
    with pytest.raises(
        LoadError, match="unknown adapter kind 'dora'; known kinds: hira, lora, tera, vera"
    ):
        config_from_dict({"kind": "dora"})
    with pytest.raises(LoadError, match=r"unknown field\(s\) \['rank'\]"):
        config_from_dict({"kind": "lora", "rank": 4})
    for cfg in (
        LoRAConfig(),
        VeRAConfig(),
        HiRAConfig(),
        TeRAConfig(in_modes={576: (8, 8, 9)}, ranks=(2, 2)),
    ):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_failed_save_keeps_the_previous_adapter(tmp_path, monkeypatch):
    model = _saved(tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    randomize_adapter(model, seed=5)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tera.adapters.io.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert {
        p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
    } == before  # no temp files left


def test_modules_to_save_train_and_round_trip(tmp_path):
    model = adapt(bert(), make_config("tera", "bert", modules_to_save=["pooler"]))
    pooler = [n for n, p in model.named_parameters() if p.requires_grad and "pooler" in n]
    assert pooler and model.parameter_report().modules_to_save == 32 * 32 + 32
    with torch.no_grad():
        model.base_model.pooler.dense.weight.add_(1.0)
    randomize_adapter(model)
    batch = inputs("bert")
    expected = model(**batch).pooler_output
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(bert(), tmp_path)
    assert torch.equal(loaded(**batch).pooler_output, expected)
    with pytest.raises(TargetError, match="modules_to_save=\\['classifier'\\] matched no module"):
        adapt(bert(), make_config("tera", "bert", modules_to_save=["classifier"]))


@pytest.mark.parametrize("kind", ["tera", "vera", "hira", "lora"])
def test_gpt2_conv1d_layers(kind):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    base = GPT2Model(cfg).eval()
    config = {
        "tera": TeRAConfig(in_mode=32, out_mode=2, target_modules=["c_attn"]),  # 32 -> 96 = 2^5 * 3
        "vera": VeRAConfig(r=8, target_modules=["c_attn"]),
        "hira": HiRAConfig(r=2, target_modules=["c_attn"]),
        "lora": LoRAConfig(r=2, target_modules=["c_attn"]),
    }[kind]
    if kind == "tera":
        config = TeRAConfig(in_mode=32, out_modes=(4, 4, 6), target_modules=["c_attn"])
    x = torch.randint(0, 100, (2, 5))
    expected_base = base(x).last_hidden_state
    model = adapt(base, config)
    assert torch.equal(model(x).last_hidden_state, expected_base)
    randomize_adapter(model)
    out = model(x).last_hidden_state
    assert not torch.allclose(out, expected_base, atol=1e-3)
    model.set_engine_path("push")
    torch.testing.assert_close(model(x).last_hidden_state, out, atol=ATOL, rtol=RTOL)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(x).last_hidden_state, out, atol=ATOL, rtol=RTOL)


LLAMA2_7B = {k: v for k, v in BUNDLED_CONFIGS["llama-2-7b"].items() if k != "model_type"}


@pytest.mark.parametrize(
    ("config", "paper_percent"),
    [  # paper Table 2 / 7, Llama-2-7B, q and v projections
        (TeRAConfig(in_mode=4096, out_mode=8), 0.0039),
        (VeRAConfig(r=256), 0.0041),
        (LoRAConfig(r=32), 0.2484),
        (HiRAConfig(r=32), 0.2484),
        (HiRAConfig(r=1), 0.0078),
        (LoRAConfig(r=128), 0.9861),
    ],
)
def test_params_percent_matches_the_paper_on_a_meta_llama2_7b(config, paper_percent):
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**LLAMA2_7B))
    report = parameter_report(model, config)
    assert report.base == 6_738_415_616
    assert len(report.layers) == 64
    assert round(report.percent, 4) == paper_percent


def test_generate_passes_through():
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model)
    prompt = torch.tensor([[1, 2, 3]])
    out = model.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    model.merge()
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False), out)
    with pytest.raises(AttributeError, match="Sequential has no generate"):
        adapt(mlp(), make_config("tera", "mlp")).generate()


def test_saved_files_get_the_usual_permissions(tmp_path):
    _saved(tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_attribute_access_falls_through_to_the_base_model():
    model = adapt(llama(), make_config("lora", "llama"))
    assert model.adapter_config.kind == "lora"
    assert model.config is model.base_model.config  # HF's config, as Trainer expects
    assert model.get_input_embeddings() is model.base_model.get_input_embeddings()


@pytest.mark.parametrize("kind", ["tera", "vera", "hira", "lora"])
def test_engine_plans_never_exceed_operand_or_output_size(kind):
    from tera.adapters.engine import _dw_plan, _push_plan

    model = adapt(llama(), make_config(kind, "llama"))
    for layer in model.adapter_layers.values():
        net = layer.adapter.network(layer.base_weight())
        biggest = max(op.numel() for op in net.operands)
        assert _dw_plan(net).largest_intermediate <= max(
            biggest, net.in_features * net.out_features
        )
        assert _push_plan(net, 4096).largest_intermediate <= max(biggest, 4096 * 32)

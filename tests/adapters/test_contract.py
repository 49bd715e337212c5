"""The bar every adapter passes (after HF PEFT's tests/testing_common.py), on three models."""

import copy
import os

import pytest
import torch

from tera.adapters import AdapterLinear, adapt, from_pretrained, parameter_report, trace_paths
from tera.theory import (
    hira_parameter_count,
    lora_parameter_count,
    tera_parameter_count,
    vera_parameter_count,
)
from tests.adapters.common import (
    ATOL,
    KINDS,
    MODELS,
    RTOL,
    forward,
    fresh,
    inputs,
    make_config,
    randomize_adapter,
    run,
)

CASES = [(k, m) for k in KINDS for m in MODELS]


def _adapted(kind, model_name, randomize=True, **extra):
    model, base = fresh(model_name)
    adapted = adapt(model, make_config(kind, model_name, **extra))
    if randomize:
        randomize_adapter(adapted)
    return adapted, base


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_init_is_a_noop(kind, model_name):
    adapted, base = _adapted(kind, model_name, randomize=False)
    batch = inputs(model_name)
    assert torch.equal(run(adapted, model_name, batch), run(base, model_name, batch))
    adapted.set_engine_path("push")
    assert torch.equal(run(adapted, model_name, batch), run(base, model_name, batch))


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_adapter_changes_the_output_once_trained(kind, model_name):
    adapted, base = _adapted(kind, model_name)
    batch = inputs(model_name)
    assert not torch.allclose(
        run(adapted, model_name, batch), run(base, model_name, batch), atol=1e-3
    )


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_engine_paths_agree(kind, model_name):
    adapted, _ = _adapted(kind, model_name)
    batch = inputs(model_name)
    outs = {}
    for path in ("materialize", "push"):
        adapted.set_engine_path(path)
        with trace_paths() as trace:
            outs[path] = run(adapted, model_name, batch)
        assert all(trace[layer] == path for layer in adapted.adapter_layers.values())
    torch.testing.assert_close(outs["materialize"], outs["push"], atol=ATOL, rtol=RTOL)
    adapted.set_engine_path("auto")
    torch.testing.assert_close(run(adapted, model_name, batch), outs["push"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_merge_equals_forward_and_unmerge_restores(kind, model_name):
    adapted, base = _adapted(kind, model_name)
    batch = inputs(model_name)
    expected = run(adapted, model_name, batch)
    weights = {n: l.base_weight().detach().clone() for n, l in adapted.adapter_layers.items()}
    adapted.merge()
    assert all(layer.merged for layer in adapted.adapter_layers.values())
    torch.testing.assert_close(run(adapted, model_name, batch), expected, atol=ATOL, rtol=RTOL)
    adapted.unmerge()
    for n, layer in adapted.adapter_layers.items():
        torch.testing.assert_close(layer.base_weight(), weights[n], atol=1e-6, rtol=0)
        if kind == "hira":  # dW depends on W0: merge keeps the original, unmerge is exact
            assert torch.equal(layer.base_weight(), weights[n])
    torch.testing.assert_close(run(adapted, model_name, batch), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_merge_and_unload_leaves_plain_layers(kind, model_name):
    adapted, base = _adapted(kind, model_name)
    batch = inputs(model_name)
    expected = run(adapted, model_name, batch)
    merged = adapted.merge_and_unload()
    assert type(merged) is type(base)
    assert not any(isinstance(m, AdapterLinear) for m in merged.modules())
    assert not any("tera_factors" in n for n, _ in merged.named_modules())
    assert set(merged.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(run(merged, model_name, batch), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_unload_returns_the_base_model(kind, model_name):
    adapted, base = _adapted(kind, model_name)
    batch = inputs(model_name)
    model = adapted.unload()
    assert torch.equal(run(model, model_name, batch), run(base, model_name, batch))
    adapt(model, make_config(kind, model_name))  # and it can be adapted again


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_disable_adapter_equals_base(kind, model_name):
    adapted, base = _adapted(kind, model_name)
    batch = inputs(model_name)
    expected_base = run(base, model_name, batch)
    adapted_out = run(adapted, model_name, batch)
    with adapted.disable_adapter():
        assert torch.equal(run(adapted, model_name, batch), expected_base)
    torch.testing.assert_close(run(adapted, model_name, batch), adapted_out, atol=0, rtol=0)
    adapted.merge()
    with adapted.disable_adapter():  # merged layers are unmerged inside and re-merged after
        torch.testing.assert_close(
            run(adapted, model_name, batch), expected_base, atol=ATOL, rtol=RTOL
        )
    assert all(layer.merged for layer in adapted.adapter_layers.values())


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_save_load_round_trip_is_bit_exact(kind, model_name, tmp_path):
    adapted, _ = _adapted(kind, model_name)
    batch = inputs(model_name)
    # the engine's path depends on whether the adapter trains; the loaded adapter is for
    # inference, so compare with the trained model in inference too (no_grad)
    with torch.no_grad():
        expected = run(adapted, model_name, batch)
    adapted.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = from_pretrained(MODELS[model_name](), tmp_path)
    assert torch.equal(run(loaded, model_name, batch), expected)
    ours = dict(adapted.adapter_parameters())
    for name, p in loaded.adapter_parameters():
        assert torch.equal(p, ours[name])
        assert not p.requires_grad  # loaded for inference unless is_trainable=True
    trainable = from_pretrained(MODELS[model_name](), tmp_path, is_trainable=True)
    assert trainable.trainable_parameter_count() == adapted.trainable_parameter_count()


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_only_adapter_parameters_change_when_training(kind, model_name):
    adapted, _ = _adapted(kind, model_name, randomize=False)
    adapted.train()
    before = {n: t.detach().clone() for n, t in adapted.state_dict().items()}
    factors = {k: t.clone() for k, t in adapted.shared_factors.items()}
    adapter_names = {
        f"base_model.{n}".replace(".adapter.", ".adapters.default.")
        for n, _ in adapted.adapter_parameters()
    }
    opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    batch = inputs(model_name)
    for _ in range(3):
        opt.zero_grad()
        forward(adapted, model_name, batch).pow(2).mean().backward()
        opt.step()
    after = adapted.state_dict()
    for name, value in before.items():
        if name in adapter_names:
            assert not torch.equal(after[name], value), f"{name} did not train"
        else:
            assert torch.equal(after[name], value), (
                f"{name} changed but is not an adapter parameter"
            )
    assert adapter_names <= set(before)
    for key, value in factors.items():
        assert torch.equal(adapted.shared_factors.get(key), value)


COUNTS = {
    "lora": lambda i, o: lora_parameter_count(i, o, 4),
    "vera": lambda i, o: vera_parameter_count(i, o, 8),
    "hira": lambda i, o: hira_parameter_count(i, o, 4),
    "tera": lambda i, o: tera_parameter_count(i, o, in_mode=32, out_mode=2),
}


@pytest.mark.parametrize(("kind", "model_name"), CASES)
def test_trainable_counts_equal_theory(kind, model_name):
    model, _ = fresh(model_name)
    config = make_config(kind, model_name)
    report = parameter_report(model, config)
    adapted = adapt(model, config)
    layers = adapted.adapter_layers
    expected = sum(COUNTS[kind](l.in_features, l.out_features) for l in layers.values())
    assert adapted.trainable_parameter_count() == expected == report.adapter
    assert adapted.parameter_report().adapter == expected
    assert report.base == sum(p.numel() for p in MODELS[model_name]().parameters())
    assert report.percent == pytest.approx(100 * expected / (report.base + expected))


@pytest.mark.parametrize(("kind", "model_name"), [(k, "llama") for k in KINDS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_models(kind, model_name, dtype):
    reference, _ = _adapted(kind, model_name)
    model = MODELS[model_name]().to(dtype)
    adapted = adapt(model, make_config(kind, model_name))
    with torch.no_grad():  # the same adapter weights as the float32 reference
        ref = dict(reference.adapter_parameters())
        for name, p in adapted.adapter_parameters():
            p.copy_(ref[name])
    batch = inputs(model_name)
    out = run(adapted, model_name, batch)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = run(reference, model_name, batch)
    # half models differ from float32 by their own rounding (eps 8e-3 for bf16), not ours
    torch.testing.assert_close(out.float(), expected, atol=0.15, rtol=0.05)
    adapted.set_engine_path("push")
    torch.testing.assert_close(
        run(adapted, model_name, batch).float(), out.float(), atol=0.05, rtol=0.02
    )
    adapted.set_engine_path("auto")
    adapted.merge()
    assert all(l.base_weight().dtype == dtype for l in adapted.adapter_layers.values())
    torch.testing.assert_close(
        run(adapted, model_name, batch).float(), out.float(), atol=0.1, rtol=0.05
    )


def test_shared_factors_are_one_storage():
    for kind in ("tera", "vera"):
        model, _ = fresh("llama")
        adapted = adapt(model, make_config(kind, "llama"))
        layers = adapted.adapter_layers
        q0, q1 = (
            layers["model.layers.0.self_attn.q_proj"],
            layers["model.layers.1.self_attn.q_proj"],
        )
        v0 = layers["model.layers.0.self_attn.v_proj"]
        net_q0, net_q1 = q0.adapter.network(q0.base_weight()), q1.adapter.network(q1.base_weight())
        frozen = [i for i, op in enumerate(net_q0.operands) if not op.requires_grad]
        assert frozen
        for i in frozen:  # same shape -> same storage
            assert net_q0.operands[i].data_ptr() == net_q1.operands[i].data_ptr()
        assert set(q0.adapter.factor_keys) == set(q1.adapter.factor_keys)
        if kind == "tera":  # 32 -> 16 has another scheme: its own factors
            assert not set(q0.adapter.factor_keys) & set(v0.adapter.factor_keys)
        shared = adapted.shared_factors
        factor_buffers = [n for n, _ in adapted.named_buffers() if "tera_factors" in n]
        assert len(factor_buffers) == len(shared.keys())  # one storage each, no duplicates
        assert not any(p.requires_grad for p in shared.buffers())
        assert "tera_factors" not in "".join(adapted.state_dict())  # regenerated, not saved
        adapted.to(torch.float64)
        net = q0.adapter.network(q0.base_weight())
        assert all(op.dtype == torch.float64 for op in net.operands)
        assert q0.adapter.network(q0.base_weight()).operands[frozen[0]].data_ptr() == (
            q1.adapter.network(q1.base_weight()).operands[frozen[0]].data_ptr()
        )


def test_deepcopy_keeps_sharing():
    model, _ = fresh("llama")
    adapted = copy.deepcopy(adapt(model, make_config("tera", "llama")))
    layers = list(adapted.adapter_layers.values())
    assert layers[0].tera_factors is layers[2].tera_factors
    assert layers[0].adapter.shared is layers[0].tera_factors

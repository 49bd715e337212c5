"""The engine: one evaluator protocol, path costs (forward and training), lean memory."""

import pytest
import torch
from torch import nn

from tera.adapters import HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig, adapt, trace_paths
from tera.adapters.engine import (
    ChainEvaluator,
    EinsumEvaluator,
    build_evaluator,
    choose_path,
    delta_weight,
    path_costs,
)
from tera.adapters.tera_kernel import TuckerEvaluator
from tera.tn import tucker_to_matrix

CONFIGS = {
    "tera": TeRAConfig(in_mode=256, out_mode=4, target_modules=["0"]),
    "tera-full": TeRAConfig(in_mode=16, out_mode=16, target_modules=["0"]),
    "lora": LoRAConfig(r=8, target_modules=["0"]),
    "vera": VeRAConfig(r=64, target_modules=["0"]),
    "hira": HiRAConfig(r=8, target_modules=["0"]),
}


def _layer(name, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = adapt(nn.Sequential(nn.Linear(256, 256)), CONFIGS[name]).to(dtype)
    layer = model.adapter_layers["0"]
    with torch.no_grad():
        for p in layer.adapter.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + 1.0)
    return model, layer


def test_tera_networks_declare_the_tucker_kernel_and_it_matches_the_einsum():
    _, layer = _layer("tera", torch.float64)
    net = layer.adapter.network(layer.base_weight())
    assert net.evaluator is TuckerEvaluator
    assert isinstance(build_evaluator(net), TuckerEvaluator)
    generic = net.__class__(**{**net.__dict__, "evaluator": None})
    torch.testing.assert_close(delta_weight(net), delta_weight(generic))
    core, vectors, factors = net.operands[0], net.operands[1::2], net.operands[2::2]
    paper = tucker_to_matrix(core, [v[:, None] * a for v, a in zip(vectors, factors)], k=1)
    torch.testing.assert_close(delta_weight(net), paper.T)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_both_paths_give_the_same_gradients(name):
    """float64, so the two evaluation orders agree to ~1e-12; 1e-9 leaves room for 256-wide sums."""
    model, layer = _layer(name, torch.float64)
    x = torch.randn(64, 256, dtype=torch.float64)
    grads = {}
    for path in ("materialize", "push"):
        layer.path = path
        model.zero_grad()
        with trace_paths() as trace:
            model(x).square().sum().backward()
        assert trace[layer] == path
        grads[path] = [p.grad.clone() for p in layer.adapter.parameters()]
    for a, b in zip(grads["materialize"], grads["push"]):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_training_cost_counts_the_backward():
    """LoRA with 2048 tokens: materializing is cheap for inference but its weight gradient
    (2 * tokens * in * out) makes pushing the cheaper path when training."""
    _, layer = _layer("lora")
    net = layer.adapter.network(layer.base_weight())
    assert choose_path(net, 2048, fused=True, backward=False) == "materialize"
    assert choose_path(net, 2048, fused=True, backward=True) == "push"
    costs = path_costs(net, 2048, fused=True, backward=True)
    assert costs["materialize"] >= 2 * 2048 * 256 * 256


def _path_of(model, layer, x):
    """The path ``layer`` took in one call of ``model`` on ``x``."""
    with trace_paths() as trace:
        model(x)
    return trace[layer]


def test_the_layer_prices_the_backward_only_when_the_adapter_trains():
    model, layer = _layer("lora")
    x = torch.randn(8, 256, 256)
    assert _path_of(model, layer, x) == "push"
    with torch.no_grad():
        assert _path_of(model, layer, x) == "materialize"
    for p in layer.adapter.parameters():
        p.requires_grad_(False)
    assert _path_of(model, layer, x) == "materialize"


@pytest.mark.parametrize("name", ["tera", "tera-full", "hira"])
def test_training_saves_at_most_two_weight_sized_tensors_per_layer(name):
    """Issue 5's memory budget is 3 * out * in extra floats per layer, whatever N.

    Saved for backward, besides the input and tensors that already exist (parameters,
    shared factors, the base weight): TeRA keeps W0 + dW (one weight), HiRA also keeps
    B @ A for its Hadamard product (two).
    """
    model, layer = _layer(name)
    layer.path = "materialize"
    existing = {t.data_ptr() for t in [*model.parameters(), *layer.tera_factors.buffers()]}
    x = torch.randn(512, 256, requires_grad=True)
    existing.add(x.data_ptr())
    extra = []

    def pack(t):
        if t.data_ptr() not in existing:
            extra.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    y.sum().backward()
    weight = 256 * 256
    assert sum(extra) <= (1 if name.startswith("tera") else 2) * weight
    assert all(p.grad is not None for p in layer.adapter.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chains_are_pushed_with_linear_layers_and_agree_with_the_planned_einsum(name):
    """LoRA and VeRA are chains (x -> A -> diag(d) -> B -> diag(b)) and take F.linear steps;
    HiRA (Hadamard with W0) and TeRA (a core over several modes) use the planned einsum."""
    from tera.adapters import engine

    _, layer = _layer(name, torch.float64)
    net = layer.adapter.network(layer.base_weight())
    declared = build_evaluator(net)
    assert isinstance(declared, ChainEvaluator) == (name in ("lora", "vera"))
    assert type(layer.evaluator(layer.active_adapter)) is type(declared)  # built once, the same
    assert declared.dense_push == (name not in ("lora", "vera"))
    x = torch.randn(32, 256, dtype=torch.float64)
    ops = layer.engine().operands(net.operands)
    planned = engine._push_plan(net, 32)(x.reshape(32, *net.in_shape), *ops)
    torch.testing.assert_close(engine.push(net, x), planned.reshape(32, -1))
    torch.testing.assert_close(EinsumEvaluator(net).push(ops, x), planned.reshape(32, -1))


def test_rates_weigh_the_push_path_against_materializing():
    """A float32 push on a GPU with a bf16 base costs ~14x per FLOP: it must then lose."""
    model = adapt(
        nn.Sequential(nn.Linear(256, 256)),
        TeRAConfig(in_mode=256, out_mode=4, target_modules=["0"]),
    )
    layer = model.adapter_layers["0"]
    net = layer.adapter.network(layer.base_weight())
    tokens = 64  # few tokens: pushing is the cheaper by FLOPs
    plain = path_costs(net, tokens, fused=True, backward=True)
    assert choose_path(net, tokens, fused=True, backward=True) == "push"
    weighed = path_costs(net, tokens, fused=True, backward=True, build_rate=2.0, push_rate=14.0)
    assert weighed["push"] == 14.0 * plain["push"]
    assert weighed["materialize"] > plain["materialize"]  # the build counted at twice the cost
    assert choose_path(net, tokens, True, True, build_rate=2.0, push_rate=14.0) == "materialize"


def test_tera_pushes_through_its_kernel_and_prices_it():
    from tera.tn.kernels import scaled_tucker_push_flops  # the algebra's FLOP count

    model = adapt(
        nn.Sequential(nn.Linear(64, 64)), TeRAConfig(in_mode=64, out_mode=4, target_modules=["0"])
    )
    layer = model.adapter_layers["0"]
    net = layer.adapter.network(layer.base_weight())
    costs = path_costs(net, 10, fused=True, backward=True)
    ranks = modes = (64, 4, 4, 4)
    assert costs["push"] == scaled_tucker_push_flops(
        ranks, modes, 1, 10
    ) + scaled_tucker_push_flops(ranks, modes, 1, 10, backward=True)
    layer.path = "push"
    x = torch.randn(3, 10, 64)
    torch.testing.assert_close(model(x), layer.base_layer(x) + x @ layer.delta_weight().T)


def test_thin_chains_keep_a_push_rate_of_one():
    """LoRA's push is bound by memory traffic, not FLOPs: the float32 rate does not apply."""
    model = adapt(nn.Sequential(nn.Linear(256, 256)), LoRAConfig(r=8, target_modules=["0"]))
    layer = model.adapter_layers["0"]
    net = layer.adapter.network(layer.base_weight())
    plain = path_costs(net, 512, fused=True, backward=True)
    weighed = path_costs(net, 512, fused=True, backward=True, build_rate=2.0, push_rate=14.0)
    assert weighed["push"] == plain["push"]

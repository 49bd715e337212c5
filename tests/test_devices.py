"""Every engine path on the device named by ``TERA_TEST_DEVICE`` against a CPU reference.

CI has no GPU, so there these run on ``cpu`` (still checking float32 against float64);
on a GPU machine run ``TERA_TEST_DEVICE=cuda python -m pytest tests/test_devices.py``
(docs/performance.md lists the last such run).

Tolerances: the float32 comparisons are against float64 evaluations of the same tensors.
A float32 GEMM over K terms errs by at most ~K * 6e-8 of the sum of the absolute terms; the
layers here have K <= 64 per product and at most five products in a chain, so 1e-5 of the
result's largest entry bounds the rounding with a margin of ~10x. A bf16 model is compared
with the bf16 rounding of its own base model (measured, not assumed).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tera.adapters import AdaptedModel, adapt, trace_paths
from tera.adapters import from_pretrained as load_adapter
from tera.adapters.layer import AdapterLinear, execution_policy
from tera.adapters.policy import cuda_tf32_enabled
from tera.adapters.tera_kernel import lean_tucker_matrix
from tera.tn import tucker_to_matrix
from tests.adapters.common import KINDS, inputs, llama, make_config, randomize_adapter

DEVICE = torch.device(os.environ.get("TERA_TEST_DEVICE", "cpu"))
PATHS = ("materialize", "push")


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """``actual`` within ``rel`` of ``expected``'s largest entry, compared on the CPU."""
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert a.shape == e.shape
    err = float((a - e).abs().max())
    assert err <= rel * float(e.abs().max()), f"max error {err:.3g} vs scale {e.abs().max():.3g}"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max())


def test_the_device_is_the_one_asked_for():
    assert DEVICE.type in ("cpu", "cuda", "xpu", "mps")
    assert torch.zeros(1, device=DEVICE).device.type == DEVICE.type


@pytest.mark.parametrize(("modes", "k"), [((8, 4, 4, 2), 2), ((64, 4, 4, 4), 1), ((32,), 1)])
def test_tucker_kernel_on_device_matches_float64(modes, k):
    g = torch.Generator().manual_seed(0)
    ranks = [max(1, m // 2) for m in modes]
    core = torch.randn(ranks, generator=g, dtype=torch.float64)
    factors = [torch.randn(r, m, generator=g, dtype=torch.float64) for r, m in zip(ranks, modes)]
    vectors = [torch.rand(r, generator=g, dtype=torch.float64) + 0.5 for r in ranks]
    upstream = torch.randn(
        int(torch.tensor(modes[k:]).prod()), int(torch.tensor(modes[:k]).prod()), generator=g
    )

    def evaluate(dtype, device, kernel):
        vs = [v.to(device, dtype).detach().requires_grad_() for v in vectors]
        c, fs = core.to(device, dtype), [f.to(device, dtype) for f in factors]
        if kernel:
            m = lean_tucker_matrix(c, vs, fs, k, transpose=True)
        else:
            m = tucker_to_matrix(c, [v[:, None] * f for v, f in zip(vs, fs)], k).T
        (m * upstream.to(device, dtype)).sum().backward()
        return m, [v.grad for v in vs]

    ref, ref_grads = evaluate(torch.float64, "cpu", kernel=False)
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out, grads = evaluate(dtype, DEVICE, kernel=True)
        assert out.device.type == DEVICE.type and out.dtype == dtype
        _close(out, ref, rel)
        for got, want in zip(grads, ref_grads):
            _close(got, want, rel)


def _pair(kind: str, dtype: torch.dtype = torch.float32):
    """(model on DEVICE with a ``dtype`` base, float64 CPU reference), same adapter values."""
    ref = adapt(llama().double(), make_config(kind, "llama"))
    randomize_adapter(ref)
    model = adapt(llama().to(DEVICE, dtype), make_config(kind, "llama"))
    with torch.no_grad():
        for (_, p), (_, q) in zip(model.adapter_parameters(), ref.adapter_parameters()):
            p.copy_(q)
    return model, ref


def _step(model: AdaptedModel, path: str = "auto"):
    """Logits and adapter gradients of one step (``path`` forced, or auto)."""
    for layer in model.adapter_layers.values():
        layer.path = path
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in inputs("llama").items()}
    model.zero_grad()
    with trace_paths() as trace:
        out = model(**batch)
    out.logits.double().log_softmax(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.adapter_parameters()}
    return out.logits, grads, trace


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_adapted_llama_on_device_matches_float64_on_cpu(kind, path):
    model, ref = _pair(kind)
    logits, grads, trace = _step(model, path)
    assert logits.device.type == DEVICE.type and logits.dtype == torch.float32
    assert {trace[layer] for layer in model.adapter_layers.values()} == {path}
    ref_logits, ref_grads, _ = _step(ref)
    _close(logits, ref_logits, 1e-5)
    for name, g in grads.items():
        _close(g, ref_grads[name], 1e-4)  # a reduction over every token and layer


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_base_on_device_trains_float32_adapter_close_to_float64(kind):
    model, ref = _pair(kind, torch.bfloat16)
    layer = next(iter(model.adapter_layers.values()))
    assert layer.base_weight().dtype == torch.bfloat16
    assert {p.dtype for _, p in model.adapter_parameters()} == {torch.float32}
    policy = execution_policy(layer.base_weight())
    assert policy.apply_dtype == (torch.float32 if DEVICE.type == "cpu" else torch.bfloat16)
    assert policy.fuse == (DEVICE.type != "cpu") and policy.tf32_build == (DEVICE.type == "cuda")
    logits, grads, _ = _step(model)
    assert logits.dtype == torch.bfloat16
    ref_logits, ref_grads, _ = _step(ref)
    # the whole model runs in bf16 (norms, attention), so the yardstick is the best a bf16
    # model can do: the float64 merged model rounded to bf16 (measured, not assumed)
    batch = {k: v.to(DEVICE) for k, v in inputs("llama").items()}
    with torch.no_grad():
        best = copy.deepcopy(ref).merge_and_unload().to(DEVICE, torch.bfloat16)
        floor = _max_diff(best(**batch).logits, ref_logits)
        with ref.disable_adapter():
            effect = _max_diff(ref_logits, ref(**inputs("llama")).logits)
    assert effect > 10 * floor  # the adapter moves the logits well above the rounding
    assert _max_diff(logits, ref_logits) <= 2 * floor
    for name, g in grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), name
        # bf16 activations through two transformer layers: the gradient direction matters
        cos = torch.nn.functional.cosine_similarity(
            g.cpu().double().flatten(), ref_grads[name].flatten(), dim=0
        )
        assert cos > 0.99, (name, float(cos))


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unmerge_on_device(kind):
    model, _ = _pair(kind)
    layers = dict(model.adapter_layers.items())
    before = {n: l.base_weight().detach().clone() for n, l in layers.items()}
    expected = {n: before[n] + l.delta_weight() for n, l in layers.items()}
    batch = {k: v.to(DEVICE) for k, v in inputs("llama").items()}
    with torch.no_grad():
        unmerged = model(**batch).logits
        model.merge()
        merged = model(**batch).logits
    for name, layer in layers.items():
        assert layer.base_weight().device.type == DEVICE.type
        assert torch.equal(layer.base_weight(), expected[name]), name
    _close(merged, unmerged, 1e-5)
    model.unmerge()
    for name, layer in layers.items():  # W0 + dW - dW in float32: ulps of the merged weight
        err = _max_diff(layer.base_weight(), before[name])
        assert err <= 1e-6 * float(expected[name].detach().abs().max()), name


@pytest.mark.parametrize("kind", KINDS)
def test_saved_on_device_loads_identically_on_cpu_and_back(kind, tmp_path):
    model, _ = _pair(kind)
    model.save_pretrained(tmp_path / "a")
    on_cpu = load_adapter(llama(), tmp_path / "a")
    for (name, p), (_, q) in zip(model.adapter_parameters(), on_cpu.adapter_parameters()):
        assert q.device.type == "cpu"
        assert torch.equal(p.detach().cpu(), q.detach()), name
    for (key, t), (_, u) in zip(model.shared_factors.items(), on_cpu.shared_factors.items()):
        assert torch.equal(t.cpu(), u), key  # regenerated bit-exactly, not read from the file
    back = load_adapter(llama().to(DEVICE), tmp_path / "a")
    assert all(
        isinstance(layer, AdapterLinear) and layer.base_weight().device.type == DEVICE.type
        for layer in back.adapter_layers.values()
    )
    for (name, p), (_, q) in zip(model.adapter_parameters(), back.adapter_parameters()):
        assert torch.equal(p.detach(), q.detach()), name


@pytest.mark.parametrize("kind", KINDS)
def test_factors_made_on_device_equal_those_made_on_cpu(kind):
    on_device = adapt(llama().to(DEVICE), make_config(kind, "llama"))
    on_cpu = adapt(llama(), make_config(kind, "llama"))
    assert on_device.shared_factors.keys() == on_cpu.shared_factors.keys()
    for (key, t), (_, u) in zip(on_device.shared_factors.items(), on_cpu.shared_factors.items()):
        assert t.device.type == DEVICE.type
        assert torch.equal(t.cpu(), u), key
    assert on_device.shared_factors.fingerprint() == on_cpu.shared_factors.fingerprint()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Dynamo's notes on what it cannot trace
def test_torch_compile_on_device_with_a_bf16_base():
    """On a GPU the layer switches TF32 on around the build: Dynamo must cope with it."""
    from torch import nn

    from tera.adapters import TeRAConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(DEVICE, torch.bfloat16)
    model = adapt(base, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))
    randomize_adapter(model)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.bfloat16)
    eager = model(x)
    eager.float().pow(2).mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.adapter_parameters()}
    model.zero_grad()
    out = torch.compile(model, backend="aot_eager")(x)
    torch.testing.assert_close(out, eager)
    out.float().pow(2).mean().backward()
    for name, p in model.adapter_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name])
    assert not cuda_tf32_enabled()  # restored after every build
    torch._dynamo.reset()

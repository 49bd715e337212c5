"""Adapters on quantized bases: bitsandbytes Linear4bit (nf4, fp4) / Linear8bitLt, torchao int8.

All on the CPU (bitsandbytes >= 0.45 and torchao run their 4-/8-bit forward and backward
there). The tiny Llama is 64 wide, not the 32 of ``tests.adapters.common``: bitsandbytes'
CPU inference repacking of 4-bit weights (AVX512-BF16 machines) fails on layers narrower
than its 64-element block, and the merged (unloaded) model runs that path.

Tolerances
----------
* Init: exact (``torch.equal``). Every adapter's update starts at exactly zero and the
  adapted layer returns the base layer's own output plus that zero.
* Adapted layer vs ``base_layer(x) + x @ dW.T``: both share the base layer's output bit for
  bit; the adapter's term differs only in summation order (pushed through the factors vs
  one matmul with the materialized ``dW``), so the float32 bound of
  :mod:`tests.adapters.common` (1e-5, ~10x the worst case measured) applies.
* Merge: the warning's max/rms are recomputed from the requantized weight and must agree to
  the 3 significant digits printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from typing import cast

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from tera.adapters import (
    HiRAConfig,
    LoRAConfig,
    QuantizedMergeWarning,
    TeRAConfig,
    VeRAConfig,
    adapt,
    dequantize_model,
    dequantize_weight,
    from_pretrained,
    is_quantized,
    quantize_model,
    trace_paths,
    weight_bytes,
)
from tera.adapters.quantized import quantization_of
from tera.errors import AdapterStateError, DependencyError, MergeError, ShapeError, TargetError
from tests.adapters import common
from tests.adapters.common import ATOL, KINDS, RTOL

bnb = pytest.importorskip("bitsandbytes")
torchao_quant = pytest.importorskip("torchao.quantization")

pytestmark = pytest.mark.filterwarnings(
    "ignore:MatMul8bitLt:UserWarning",  # bitsandbytes casts float32 inputs to float16 (8-bit)
)

TARGETS = ["q_proj", "v_proj"]
BACKENDS = ("nf4", "fp4", "int8", "torchao")
HIDDEN = 64


def llama() -> LlamaForCausalLM:
    """The shared tiny Llama at hidden 64 (4-bit blocks need in_features % 64 == 0)."""
    return cast(LlamaForCausalLM, common.llama(hidden_size=HIDDEN))


def quantized_llama(backend: str) -> LlamaForCausalLM:
    """The tiny Llama with q/v quantized by ``backend`` (the rest stays float32)."""
    model = llama()
    if backend == "torchao":
        torchao_quant.quantize_(
            model,
            torchao_quant.Int8WeightOnlyConfig(),
            filter_fn=lambda m, name: name.endswith(tuple(TARGETS)),
        )
    elif backend == "int8":
        quantize_model(model, "8bit", TARGETS)
    else:
        quantize_model(model, "4bit", TARGETS, quant_type=backend)
    return model


def config(kind: str, targets: list[str] | None = None):
    t = targets or TARGETS
    return {
        "lora": LoRAConfig(r=4, alpha=8, target_modules=t),
        "vera": VeRAConfig(r=8, target_modules=t),
        "hira": HiRAConfig(r=4, target_modules=t),
        "tera": TeRAConfig(in_mode=HIDDEN, out_mode=2, target_modules=t),
    }[kind]


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(seed))


def perturb(model) -> None:
    """Adapter parameters drawn around 1 (so that dW != 0; TeRA multiplies its d vectors)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in model.adapter_parameters():
            p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


# -- detection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_targets_are_detected_as_quantized(backend):
    model = quantized_llama(backend)
    q = model.model.layers[0].self_attn.q_proj
    info = quantization_of(q)
    assert info is not None and is_quantized(q)
    assert info.scheme == {"nf4": "nf4", "fp4": "fp4", "int8": "int8"}.get(backend, "Int8Tensor")
    assert not is_quantized(model.model.layers[0].self_attn.k_proj)


# -- forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_init_is_a_no_op_on_the_quantized_base(backend, kind):
    model = quantized_llama(backend)
    tokens = ids()
    before = logits(model, tokens)
    adapted = adapt(model, config(kind))
    assert torch.equal(logits(adapted, tokens), before)
    for layer in adapted.adapter_layers.values():
        assert is_quantized(layer.base_layer)  # never replaced by a float layer


@pytest.mark.parametrize("path", ["materialize", "push"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_quantized_base_plus_adapter(backend, kind, path):
    adapted = adapt(quantized_llama(backend), config(kind))
    perturb(adapted)
    adapted.set_engine_path(path)
    x = torch.randn(3, 5, HIDDEN, generator=torch.Generator().manual_seed(4))
    for layer in adapted.adapter_layers.values():
        with torch.no_grad():
            base = layer.base_layer(x)  # first: a 4-bit layer may repack for CPU inference here
            dw = layer.delta_weight()
            assert dw.dtype == torch.float32 and float(dw.abs().max()) > 1e-4
            expected = base + x @ dw.T
            with trace_paths() as trace:
                got = layer(x)
        assert trace[layer] == path
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_hira_uses_the_dequantized_base_weight():
    adapted = adapt(quantized_llama("nf4"), config("hira"))
    perturb(adapted)
    layer = adapted.adapter_layers["model.layers.0.self_attn.q_proj"]
    w0 = dequantize_weight(layer.base_layer, torch.float32)
    adapter = layer.adapter
    expected = w0 * (adapter.B @ adapter.A)
    torch.testing.assert_close(layer.delta_weight(), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_lowers_the_loss(backend, kind):
    adapted = adapt(quantized_llama(backend), config(kind))
    adapted.train()
    params = [p for p in adapted.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=1e-2)
    tokens = ids()
    losses = []
    for _ in range(4):
        loss = adapted(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for layer in adapted.adapter_layers.values():  # the base stays frozen and quantized
        assert is_quantized(layer.base_layer)
        assert all(not p.requires_grad for p in layer.base_layer.parameters())


# -- merging -----------------------------------------------------------------------------------
def _reported(message: str) -> tuple[float, float]:
    found = re.search(r"max ([0-9.e+-]+), rms ([0-9.e+-]+)", message)
    assert found, message
    return float(found.group(1)), float(found.group(2))


@pytest.mark.parametrize("kind", ["tera", "hira"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_and_unload_requantizes_and_warns_with_its_error(backend, kind):
    adapted = adapt(quantized_llama(backend), config(kind))
    perturb(adapted)
    expected = {
        name: dequantize_weight(layer.base_layer, torch.float32) + layer.delta_weight()
        for name, layer in adapted.adapter_layers.items()
    }
    with pytest.warns(QuantizedMergeWarning, match="requantized") as record:
        merged = adapted.merge_and_unload()
    assert len(record) == 1  # one warning for all the layers
    errors = []
    for name, target in expected.items():
        layer = merged.get_submodule(name)
        assert type(layer) is type(quantized_llama(backend).get_submodule(name))
        errors.append(dequantize_weight(layer, torch.float32) - target)
    err = torch.cat([e.detach().flatten() for e in errors])
    max_err, rms_err = _reported(str(record[0].message))
    assert max_err == pytest.approx(float(err.abs().max()), rel=1e-2)
    assert rms_err == pytest.approx(float(err.square().mean().sqrt()), rel=1e-2)
    assert max_err > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_merge_and_unload_dequantize_returns_full_precision(backend):
    adapted = adapt(quantized_llama(backend), config("lora"))
    perturb(adapted)
    x = torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(5))
    name = "model.layers.1.self_attn.v_proj"
    layer = adapted.adapter_layers[name]
    with torch.no_grad():
        w = dequantize_weight(layer.base_layer, torch.float32) + layer.delta_weight()
        expected = x @ w.T + (0 if layer.base_layer.bias is None else layer.base_layer.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuantizedMergeWarning)
        merged = adapted.merge_and_unload(dequantize=True)
    assert not any(is_quantized(m) for m in merged.modules())
    out = merged.get_submodule(name)
    assert type(out) is nn.Linear and out.weight.dtype == torch.float32
    torch.testing.assert_close(out(x), expected, atol=ATOL, rtol=RTOL)


def test_merge_then_unmerge_restores_the_quantized_original_exactly():
    adapted = adapt(quantized_llama("nf4"), config("tera"))
    perturb(adapted)
    tokens = ids()
    adapted.train()  # no CPU inference repacking: compare like with like
    before = logits(adapted, tokens)
    with adapted.disable_adapter():
        plain = logits(adapted, tokens)
    with pytest.warns(QuantizedMergeWarning):
        adapted.merge()
    merged = logits(adapted, tokens)
    assert not torch.equal(merged, before)  # lossy, but it kept the adapter's effect:
    assert float((merged - before).norm()) < 0.5 * float((plain - before).norm())
    adapted.unmerge()
    assert torch.equal(logits(adapted, tokens), before)
    with pytest.warns(QuantizedMergeWarning):
        adapted.merge()
    with pytest.warns(QuantizedMergeWarning), adapted.disable_adapter():  # unmerge, merge
        assert torch.equal(logits(adapted, tokens), plain)
    assert torch.equal(logits(adapted, tokens), merged)  # requantizing is deterministic


def test_unmerge_after_a_merge_without_the_original_is_refused():
    adapted = adapt(quantized_llama("int8"), config("lora"))
    perturb(adapted)
    layer = adapted.adapter_layers["model.layers.0.self_attn.q_proj"]
    with pytest.warns(QuantizedMergeWarning, match="this layer"):
        layer.merge(keep_original=False)
    with pytest.raises(AdapterStateError, match="keep_original=False and requantized"):
        layer.unmerge()
    with pytest.raises(AdapterStateError, match="already merged"):
        layer.merge()


def test_unsupported_torchao_weights_refuse_a_requantized_merge():
    model = llama()
    torchao_quant.quantize_(
        model,
        torchao_quant.Int8DynamicActivationInt8WeightConfig(),
        filter_fn=lambda m, name: name.endswith("q_proj"),
    )
    adapted = adapt(model, config("lora", ["q_proj"]))
    with pytest.raises(MergeError, match="dequantize=True"):
        adapted.adapter_layers["model.layers.0.self_attn.q_proj"].merge()
    merged = adapted.merge_and_unload(dequantize=True)
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear


def test_nonfinite_merge_is_refused_and_leaves_the_base():
    adapted = adapt(quantized_llama("nf4"), config("lora"))
    layer = adapted.adapter_layers["model.layers.0.self_attn.q_proj"]
    base = layer.base_layer
    with torch.no_grad():
        layer.adapter.B.fill_(float("inf"))
    with pytest.raises(MergeError, match="NaN/inf"):
        layer.merge()
    assert layer.base_layer is base and not layer.merged


# -- saving and loading ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tera", "hira", "lora"])
def test_adapter_trained_on_4bit_loads_onto_4bit_and_float_bases(tmp_path, kind):
    adapted = adapt(quantized_llama("nf4"), config(kind))
    perturb(adapted)
    tokens = ids()
    expected = logits(adapted, tokens)
    adapted.save_pretrained(tmp_path)
    saved = {n: p.detach().clone() for n, p in adapted.adapter_parameters()}

    on_4bit = from_pretrained(quantized_llama("nf4"), tmp_path)
    assert torch.equal(logits(on_4bit, tokens), expected)

    on_float = from_pretrained(llama(), tmp_path)
    assert {n: p for n, p in on_float.adapter_parameters()}.keys() == saved.keys()
    for name, p in on_float.adapter_parameters():
        assert torch.equal(p, saved[name])
    name = "model.layers.0.self_attn.q_proj"
    q_layer, f_layer = adapted.adapter_layers[name], on_float.adapter_layers[name]
    assert not is_quantized(f_layer.base_layer)
    if kind != "hira":  # HiRA's dW scales with W0, which quantization changed
        assert torch.equal(f_layer.delta_weight(), q_layer.delta_weight())
    # the float model differs from the 4-bit one by the base's quantization error only
    base_gap = float((logits(llama(), tokens) - logits(quantized_llama("nf4"), tokens)).abs().max())
    assert float((logits(on_float, tokens) - expected).abs().max()) < 3 * base_gap + 1e-3


# -- transformers end to end -------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_transformers_model_loaded_with_a_bitsandbytes_config(tmp_path, bits):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    llama().save_pretrained(tmp_path / "base")
    quant = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
        if bits == 4
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=quant, device_map="cpu"
    )
    assert is_quantized(model.model.layers[0].self_attn.q_proj)
    model.train()  # compare training-mode forwards (no CPU inference repacking)
    tokens = ids()
    with torch.no_grad():
        before = model(input_ids=tokens).logits
    adapted = adapt(model, config("tera"))
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=tokens).logits, before)
    opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = adapted(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    adapted.save_pretrained(tmp_path / "adapter")
    loaded = from_pretrained(llama(), tmp_path / "adapter")
    assert loaded.trainable_parameter_count() == 0  # frozen for inference, as in PEFT


# -- quantize_model / weight_bytes -------------------------------------------------------------
def test_quantize_model_swaps_linear_layers_and_keeps_heads():
    model = quantize_model(llama(), "4bit")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert type(linears["lm_head"]) is nn.Linear  # kept in full precision by default
    assert all(is_quantized(m) for n, m in linears.items() if n != "lm_head")
    q = model.model.layers[0].mlp.down_proj
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_type == "nf4"


def test_quantize_model_regex_targets_and_errors():
    model = quantize_model(llama(), "8bit", r".*\.layers\.0\..*_proj")
    assert is_quantized(model.model.layers[0].self_attn.o_proj)
    assert not is_quantized(model.model.layers[1].self_attn.o_proj)
    with pytest.raises(ShapeError, match="'4bit' or '8bit'"):
        quantize_model(llama(), "3bit")  # type: ignore[arg-type]
    with pytest.raises(TargetError, match="selects no full-precision"):
        quantize_model(llama(), "4bit", ["no_such_layer"])


def test_quantize_model_output_matches_its_dequantized_weight():
    layer = nn.Linear(HIDDEN, 32)
    x = torch.randn(3, HIDDEN)
    q = quantize_model(nn.Sequential(layer), "4bit")[0]
    q.train()
    with torch.no_grad():
        expected = x @ dequantize_weight(q).T + q.bias
        torch.testing.assert_close(q(x), expected, atol=ATOL, rtol=RTOL)
        assert float((dequantize_weight(q) - layer.weight).abs().max()) < 0.2 * float(
            layer.weight.abs().max()
        )


def test_weight_bytes_counts_quantized_storage_and_scales():
    out_f, in_f = 128, 256
    base = nn.Sequential(nn.Linear(in_f, out_f))
    assert weight_bytes(base) == 4 * (out_f * in_f + out_f)
    q8 = quantize_model(nn.Sequential(nn.Linear(in_f, out_f)), "8bit")
    # int8 weights, one float32 scale per row, the float32 bias
    assert weight_bytes(q8) == out_f * in_f + 4 * out_f + 4 * out_f
    with torch.no_grad():
        q8(torch.randn(2, in_f))  # bitsandbytes moves the scales to the layer's state
    assert weight_bytes(q8) == out_f * in_f + 4 * out_f + 4 * out_f
    q4 = quantize_model(nn.Sequential(nn.Linear(in_f, out_f)), "4bit")
    packed, scales = out_f * in_f // 2, 4 * (out_f * in_f // 64)
    assert packed + scales + 4 * out_f < weight_bytes(q4) < packed + scales + 4 * out_f + 1024
    ao = nn.Sequential(nn.Linear(in_f, out_f))
    torchao_quant.quantize_(ao, torchao_quant.Int8WeightOnlyConfig())
    # int8 weights, float32 row scales, int8 (zero) row zero-points, the float32 bias
    assert weight_bytes(ao) == out_f * in_f + 4 * out_f + out_f + 4 * out_f


def test_dequantize_model_returns_float_linears():
    model = dequantize_model(quantized_llama("int8"))
    assert not any(is_quantized(m) for m in model.modules())
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear


# -- bad combinations --------------------------------------------------------------------------
def test_unquantized_params4bit_is_refused():
    model = nn.Sequential(bnb.nn.Linear4bit(HIDDEN, HIDDEN))  # never moved: not quantized
    with pytest.raises(TargetError, match="not quantized yet"):
        adapt(model, LoRAConfig(r=2, target_modules=["0"]))


def test_8bit_layer_with_float_weights_is_refused():
    model = nn.Sequential(bnb.nn.Linear8bitLt(HIDDEN, HIDDEN, has_fp16_weights=True))
    with pytest.raises(TargetError, match="has_fp16_weights=False"):
        adapt(model, LoRAConfig(r=2, target_modules=["0"]))
    model = nn.Sequential(bnb.nn.Linear8bitLt(HIDDEN, HIDDEN, has_fp16_weights=False))
    with pytest.raises(TargetError, match="not quantized yet"):  # never moved to a device
        adapt(model, LoRAConfig(r=2, target_modules=["0"]))


def test_missing_bitsandbytes_gives_our_error(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(DependencyError, match="pip install bitsandbytes"):
        quantize_model(llama(), "4bit")


def test_tera_imports_and_adapts_without_the_quantization_packages():
    code = (
        "import sys; sys.modules['bitsandbytes'] = None; sys.modules['torchao'] = None\n"
        "import torch; from torch import nn\n"
        "from tera.adapters import LoRAConfig, adapt, is_quantized, weight_bytes\n"
        "m = adapt(nn.Sequential(nn.Linear(8, 8)), LoRAConfig(r=2, target_modules=['0']))\n"
        "assert not is_quantized(m.base_model[0].base_layer) and weight_bytes(nn.Linear(2, 2))\n"
        "m(torch.randn(2, 8))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_repacked_4bit_weights_keep_their_own_forward():
    """bitsandbytes repacks 4-bit weights for CPU inference (eval, no grad, AVX512-BF16)."""
    torch.manual_seed(0)
    q = quantize_model(nn.Sequential(nn.Linear(2 * HIDDEN, HIDDEN)), "4bit", double_quant=True)
    layer = q[0]
    canonical = dequantize_weight(layer).clone()
    layer.eval()
    x = torch.randn(2, 2 * HIDDEN)
    with torch.no_grad():
        q(x)
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack")
    # the repacked layer computes with bf16 block scales: 8 mantissa bits, |rel| <= 2**-8
    repacked = dequantize_weight(layer)
    assert not torch.equal(repacked, canonical)
    torch.testing.assert_close(repacked, canonical, atol=0, rtol=2**-8)
    adapted = adapt(q, HiRAConfig(r=2, target_modules=["0"]))
    perturb(adapted)
    base = adapted.adapter_layers["0"].base_layer
    with torch.no_grad():
        expected = base(x) + x @ adapted.adapter_layers["0"].delta_weight().T
        torch.testing.assert_close(adapted(x), expected, atol=ATOL, rtol=RTOL)
    assert getattr(base.weight.quant_state, "packing_format_for_cpu", False)  # untouched
    with pytest.warns(QuantizedMergeWarning):
        merged = adapted.merge_and_unload()
    assert type(merged[0]).__name__ == "Linear4bit"


def test_quantized_step_benchmark_runs(tmp_path):
    """The benchmark script end to end on a tiny size (structure only, no timing asserted)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import quantized_step

    out = tmp_path / "q.md"
    text = quantized_step.main(
        ["--layers", "1", "--vocab", "64", "--batch", "1", "--length", "8", "--reps", "1"]
        + ["--out", str(out)]
    )
    assert out.read_text() == text
    lines = [line.split(" | ") for line in text.splitlines() if line.startswith("| LoRA |")]
    rows = [r for r in lines if len(r) == 8]  # the step table (then the merge-error table)
    assert [r[1] for r in rows] == ["float32", "8bit", "4bit"]
    merges = [r for r in lines if len(r) == 5]
    assert [r[1] for r in merges] == ["8bit", "4bit"]
    assert all(float(r[2]) > 0 for r in merges)  # requantizing is lossy
    weights = [float(r[5]) for r in rows]
    assert weights[0] > weights[1] > weights[2]  # float32 > int8 > nf4 storage


def test_parameter_counts_count_4bit_weights_unpacked():
    from tera.adapters import parameter_report

    float_model = llama()
    q = quantized_llama("nf4")
    cfg = config("tera")
    assert parameter_report(q, cfg).base == parameter_report(float_model, cfg).base
    adapted, ref = adapt(q, cfg), adapt(float_model, config("tera"))
    assert adapted.parameter_report().base == ref.parameter_report().base
    assert adapted.parameter_report().percent == ref.parameter_report().percent


def test_quantize_model_refuses_4bit_layers_bitsandbytes_cannot_block():
    from torch import nn

    from tera.adapters import quantize_model
    from tera.errors import ShapeError

    narrow = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 64))
    with pytest.raises(
        ShapeError, match=r"divisible by bitsandbytes' block of 64.*0 has in_features=32"
    ):
        quantize_model(narrow, "4bit")
    assert type(quantize_model(narrow, "8bit")[0]).__name__ == "Linear8bitLt"


@pytest.mark.parametrize("backend", ["nf4", "int8"])
def test_mixed_batch_on_a_quantized_base(backend):
    """Rows of a mixed batch over a quantized base equal their adapter alone (all kinds)."""
    model = adapt(quantized_llama(backend), config("tera"), adapter_name="tera")
    for kind in ("vera", "hira", "lora"):
        model.add_adapter(kind, config(kind))
    for kind in ("tera", "vera", "hira", "lora"):
        model.set_adapter(kind)
        perturb(model)
    rows = ["hira", "tera", "__base__", "lora", "vera"]
    tokens = torch.randint(0, 100, (len(rows), 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mixed = model(input_ids=tokens, adapter_names=rows).logits
    for b, name in enumerate(rows):
        if name == "__base__":
            with model.disable_adapter():
                want = logits(model, tokens[b : b + 1])
        else:
            model.set_adapter(name)
            want = logits(model, tokens[b : b + 1])
        torch.testing.assert_close(mixed[b : b + 1], want, atol=ATOL, rtol=RTOL, msg=name)

"""Issue 22: nothing lost, nothing silently wrong (empty inputs, bf16 saves, resume, 4-bit).

The atomic-save SIGKILL test is in test_atomic_save.py, the loader's fuzz test in
test_load_fuzz.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainingArguments

from tera.adapters import (
    AdaptedModel,
    HiRAConfig,
    LoRAConfig,
    TeRAConfig,
    VeRAConfig,
    adapt,
    dequantize_model,
    dequantize_weight,
    from_pretrained,
    quantize_model,
    saving,
)
from tera.adapters.engine import Network
from tera.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from tera.adapters.quantized import keep_input_gradient
from tera.adapters.tera_kernel import TuckerEvaluator
from tera.adapters.trainer import AdapterTrainer
from tera.errors import LoadError, SaveError
from tests.adapters.common import KINDS, inputs, llama, make_config, randomize_adapter, run

EMPTY_CONFIGS = {
    "tera": TeRAConfig(in_mode=8, out_mode=2, target_modules=["0"]),
    "vera": VeRAConfig(r=4, target_modules=["0"]),
    "hira": HiRAConfig(r=4, target_modules=["0"]),
    "lora": LoRAConfig(r=4, target_modules=["0"]),
}


# -- defect 7: empty inputs -------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(EMPTY_CONFIGS))
@pytest.mark.parametrize("path", ["materialize", "push"])
@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (0, 3, 64)])
def test_an_empty_input_gives_what_nn_linear_gives(kind, path, shape):
    """Shape, dtype and (zero) gradients as nn.Linear's for a batch without rows."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    model = adapt(base, EMPTY_CONFIGS[kind])
    model.set_engine_path(path)
    x = torch.randn(*shape, requires_grad=True)
    y = model(x)
    y.sum().backward()
    plain = nn.Linear(64, 64)
    expected = plain(x)
    assert y.shape == expected.shape and y.dtype == expected.dtype
    assert x.grad is not None and x.grad.shape == x.shape
    for name, p in model.adapter_parameters():
        assert p.grad is not None, name  # as nn.Linear's weight: a zero gradient, not None
        assert torch.equal(p.grad, torch.zeros_like(p)), name


@pytest.mark.parametrize("shape", [(0, 5, 6), (2, 0, 6), (0, 0, 6)])
def test_the_tucker_bank_push_takes_empty_rows_and_tokens(shape):
    """push_rows with no rows or no tokens returns an empty (rows, tokens, out) result."""
    gen = torch.Generator().manual_seed(0)
    core, a1, a2 = (torch.randn(s, generator=gen) for s in [(3, 2), (3, 6), (2, 4)])
    d1, d2 = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    net = Network(("ab", "a", "ai", "b", "bo"), (core, d1[0], a1, d2[0], a2), "i", "o", (6,), (4,))
    x = torch.randn(*shape, generator=gen)
    rows = torch.zeros(shape[0], dtype=torch.long)
    y = TuckerEvaluator(net).push_rows(
        (core, d1, a1, d2, a2), (False, True, False, True, False), x, rows
    )
    assert y.shape == (shape[0], shape[1], 4)


# -- defect 1: resuming restores exactly the adapters that were saved ------------------------
def _two_adapters(active: str = "b") -> AdaptedModel:
    """A tiny Llama with adapters "default" and "b" of one config, "b" active."""
    model = adapt(llama(vocab_size=64).train(), RESUME_CONFIG)
    model.add_adapter("b", RESUME_CONFIG)
    model.set_adapter(active)
    return model


RESUME_CONFIG = TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"])


def _all_ds(model: AdaptedModel) -> dict[str, torch.Tensor]:
    return {
        f"{name}/{key}": p.detach().clone()
        for name in model.adapter_names
        for key, p in model.adapter_parameters(name)
    }


@torch.no_grad()
def _scramble(model: AdaptedModel, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name in model.adapter_names:
        for _, p in model.adapter_parameters(name):
            p.copy_(torch.randn(p.shape, generator=gen))


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_load_adapter_weights_restores_every_saved_adapter(tmp_path):
    """Found: the folder's top level ("default") was read into the active adapter "b"."""
    model = _two_adapters()
    _scramble(model, seed=1)
    saved = _all_ds(model)
    model.save_pretrained(tmp_path)
    _scramble(model, seed=2)
    model.load_adapter_weights(tmp_path)
    _assert_same(_all_ds(model), saved)
    assert model.active_adapter == "b"


def test_load_adapter_weights_is_all_or_nothing(tmp_path):
    model = _two_adapters()
    _scramble(model, seed=1)
    model.save_pretrained(tmp_path)
    _scramble(model, seed=2)
    before = _all_ds(model)
    (tmp_path / "b" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)  # "b" is broken
    with pytest.raises(LoadError, match=rf"{tmp_path / 'b'}"):
        model.load_adapter_weights(tmp_path)
    _assert_same(_all_ds(model), before)  # "default" was not loaded either
    (tmp_path / "b" / "adapter_model.safetensors").unlink()
    (tmp_path / "b" / "adapter_config.json").unlink()
    with pytest.raises(LoadError, match=r"holds no adapter 'b' .*adapter_names="):
        model.load_adapter_weights(tmp_path)
    model.load_adapter_weights(tmp_path, adapter_names=["default"])  # the one that is there
    assert not torch.equal(
        _all_ds(model)["default/" + _first_key(model)], before["default/" + _first_key(model)]
    )


def test_a_failure_while_writing_puts_every_adapter_back(tmp_path, monkeypatch):
    """The last adapter's restore fails after the first one was written: both come back."""
    model = _two_adapters()
    _scramble(model, seed=1)
    model.save_pretrained(tmp_path)
    _scramble(model, seed=2)
    before = _all_ds(model)
    real = saving.restore

    def restore(model, meta, tensors, directory, adapter_name):
        real(model, meta, tensors, directory, adapter_name)
        if adapter_name == "b":
            raise LoadError(f"simulated failure after restoring {directory}")

    monkeypatch.setattr(saving, "restore", restore)
    with pytest.raises(LoadError, match="simulated failure"):
        model.load_adapter_weights(tmp_path)
    _assert_same(_all_ds(model), before)


def _first_key(model: AdaptedModel) -> str:
    return next(iter(model.adapter_parameters("default")))[0]


def _trainer_args(out, **extra) -> TrainingArguments:
    settings = {
        "output_dir": str(out),
        "use_cpu": True,
        "report_to": [],
        "max_steps": 4,
        "save_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-2,
        "seed": 0,
        "disable_tqdm": True,
    }
    return TrainingArguments(**{**settings, **extra})


def _train_data() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in ids]


def test_trainer_resume_with_an_active_adapter_that_is_not_default(tmp_path):
    """Found: the resumed "b" differed from the uninterrupted run by up to 0.118."""
    model = _two_adapters()
    _scramble(model, seed=3)  # "default" differs from "b": a mix-up would show
    start = _all_ds(model)
    AdapterTrainer(
        model=model, args=_trainer_args(tmp_path / "full"), train_dataset=_train_data()
    ).train()
    resumed = _two_adapters()
    with torch.no_grad():
        for name in resumed.adapter_names:
            for key, p in resumed.adapter_parameters(name):
                p.copy_(start[f"{name}/{key}"])
    trainer = AdapterTrainer(
        model=resumed, args=_trainer_args(tmp_path / "again"), train_dataset=_train_data()
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    # same optimizer state, same batches, same d's restored: identical arithmetic
    _assert_same(_all_ds(resumed), _all_ds(model))
    assert any(not torch.equal(_all_ds(model)[k], start[k]) for k in start if k.startswith("b/"))


def test_trainer_resumes_a_model_without_a_default_adapter(tmp_path):
    """A model whose only adapter is "b" has no files at the checkpoint's top level."""
    model = adapt(llama(vocab_size=64).train(), RESUME_CONFIG, adapter_name="b")
    args = _trainer_args(tmp_path / "full", max_steps=2)
    AdapterTrainer(model=model, args=args, train_dataset=_train_data()).train()
    assert (tmp_path / "full" / "checkpoint-2" / "b" / "adapter_model.safetensors").is_file()
    resumed = adapt(llama(vocab_size=64).train(), RESUME_CONFIG, adapter_name="b")
    resumed.load_adapter_weights(tmp_path / "full" / "checkpoint-2")
    _assert_same(_all_ds(resumed), _all_ds(model))


def test_load_best_model_at_end_loads_the_best_checkpoints_adapters(tmp_path):
    """Trainer's own loader looks for a full model.safetensors; AdapterTrainer's reads the
    adapters of the best checkpoint into the model."""
    model = _two_adapters()
    args = _trainer_args(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=_train_data(), eval_dataset=_train_data()[:4]
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    expected = _two_adapters()
    expected.load_adapter_weights(best)
    _assert_same(_all_ds(model), _all_ds(expected))


# -- defect 3: a model converted to bf16/fp16 after adapt ------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("include_factors", [False, True], ids=["regenerated", "stored"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_model_converted_after_adapt_loads_to_the_outputs_it_had(
    tmp_path, kind, include_factors, dtype
):
    """Found: with factors a FingerprintError; without, logits off by 0.0044, silently."""
    model = adapt(llama(), make_config(kind, "llama"))
    randomize_adapter(model, seed=1)
    model = model.to(dtype)
    batch = inputs("llama")
    expected = run(model, "llama", batch)
    model.save_pretrained(tmp_path / "a", include_factors=include_factors)
    loaded = from_pretrained(llama().to(dtype), tmp_path / "a")
    assert torch.equal(run(loaded, "llama", batch), expected)
    loaded.save_pretrained(tmp_path / "b", include_factors=include_factors)  # and again
    again = from_pretrained(llama().to(dtype), tmp_path / "b")
    assert torch.equal(run(again, "llama", batch), expected)


def test_the_factors_of_a_converted_model_record_their_rounding():
    model = adapt(llama(), make_config("tera", "llama"))
    shared = model.shared_factors
    keys = shared.keys()
    generated = shared.fingerprint(keys)
    assert shared.casts(keys) == {}
    model.double().float()  # exact both ways: nothing rounded
    assert shared.fingerprint(keys) == generated and shared.casts(keys) == {}
    model.to(torch.bfloat16).float()  # rounded once, kept in float32
    assert shared.casts(keys) == {k: ["bfloat16"] for k in keys}
    assert shared.fingerprint(keys) != generated  # the values it computes with now
    assert not shared.replaced(keys)  # still what the seed gives, rounded


def test_loading_beside_an_adapter_whose_factors_differ_is_refused(tmp_path):
    """A bf16-rounded adapter loaded into a float32 model sharing its factor keys would
    round the other adapter's factors: refused, and the model is unchanged."""
    source = adapt(llama(), make_config("tera", "llama")).to(torch.bfloat16)
    source.save_pretrained(tmp_path)
    model = adapt(llama(), make_config("tera", "llama"))
    before = {k: v.clone() for k, v in model.shared_factors.items()}
    with pytest.raises(LoadError, match="load it into a model of its own"):
        model.load_adapter(tmp_path, adapter_name="other")
    assert all(torch.equal(model.shared_factors.get(k), v) for k, v in before.items())
    assert model.adapter_names == ["default"]


# -- defect 4: values of the wrong type or beyond the bound ----------------------------------
def _saved_tera(tmp_path) -> tuple[AdaptedModel, str]:
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model, seed=1)
    model.save_pretrained(tmp_path)
    name = next(iter(model.adapter_parameters()))[0]
    return model, name


def _rewrite(tmp_path, name: str, value: torch.Tensor) -> None:
    """Replace one tensor of the weights file, and the digest that would give it away."""
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    tensors[name] = value
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta.pop("weights_sha256")
    meta.pop("save_id")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_a_non_float_tensor_is_refused_by_name(tmp_path, dtype):
    """Found: int64 tensors were cast into float parameters without a word."""
    model, name = _saved_tera(tmp_path)
    value = load_file(str(tmp_path / WEIGHTS_NAME))[name]
    _rewrite(tmp_path, name, value.round().to(dtype))
    with pytest.raises(
        LoadError, match=rf"tensor '{re.escape(name)}' in .* is torch\.{str(dtype)[6:]}"
    ):
        from_pretrained(llama(), tmp_path)
    with pytest.raises(LoadError, match=rf"tensor '{re.escape(name)}'"):
        model.load_adapter_weights(tmp_path)


@pytest.mark.parametrize("value", [3e38, -1e30, 2.0**63 * 1.01])
def test_a_value_beyond_the_bound_is_refused_by_name(tmp_path, value):
    """Found: d = 3e38 passed the NaN/inf check and the model then gave non-finite logits."""
    _, name = _saved_tera(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    bad = tensors[name].clone()
    bad[0] = value
    _rewrite(tmp_path, name, bad)
    with pytest.raises(
        LoadError, match=rf"tensor '{re.escape(name)}' .*beyond 9.22e\+18 \(2\*\*63\)"
    ):
        from_pretrained(llama(), tmp_path)


def test_the_bound_lets_every_value_below_it_through(tmp_path):
    """2**63 itself (and float64 files) load: the bound refuses only what lies beyond."""
    _, name = _saved_tera(tmp_path)
    edge = load_file(str(tmp_path / WEIGHTS_NAME))[name].double()
    edge[0] = 2.0**63
    _rewrite(tmp_path, name, edge)
    loaded = from_pretrained(llama(), tmp_path)
    assert float(dict(loaded.adapter_parameters())[name][0]) == 2.0**63


def test_a_value_a_float16_model_cannot_hold_is_refused(tmp_path):
    """Finite in the file (float32) but beyond float16's 65504: refused at the cast."""
    _, name = _saved_tera(tmp_path)
    big = load_file(str(tmp_path / WEIGHTS_NAME))[name].clone()
    big[0] = 1e6
    _rewrite(tmp_path, name, big)
    model = adapt(llama(), make_config("tera", "llama")).to(torch.float16)
    with pytest.raises(LoadError, match=rf"tensor '{re.escape(name)}' .*float16 cannot hold"):
        model.load_adapter_weights(tmp_path)


# -- defect 2: a 4-bit base keeps its input gradient after an evaluation pass ---------------
def _grads(model: AdaptedModel, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad()
    model(x).pow(2).sum().backward()
    return {name: p.grad for name, p in model.adapter_parameters()}


def _four_bit_mlp() -> tuple[AdaptedModel, nn.Module]:
    """A 4-bit MLP adapted on all three layers (no bias: the silent case), and its float twin."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 64, bias=False) for _ in range(3)]
    base = nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), layers[2])
    return adapt(quantize_model(base, "4bit"), FOUR_BIT), base


FOUR_BIT = TeRAConfig(in_mode=8, out_mode=2, target_modules=["0", "2", "4"])


def test_4bit_training_after_an_evaluation_pass_gets_the_true_gradients():
    """Found: after one no-grad forward, adapters before a 4-bit layer got no or wrong
    gradients (up to 100% off), silently. Reference: float layers holding the weights the
    4-bit layers compute with (dequantize_weight); the same float32 sums in another order,
    so 1e-5 of the largest gradient (~10x the differences seen) is the bound."""
    pytest.importorskip("bitsandbytes")
    model, _ = _four_bit_mlp()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(4, 64, generator=gen)
    model.eval()
    with torch.no_grad():
        model(x)  # an evaluation pass: bitsandbytes may repack the weights here
    got = _grads(model, x)
    twin = nn.Sequential(
        *(nn.Linear(64, 64, bias=False) if i % 2 == 0 else nn.ReLU() for i in range(5))
    )
    with torch.no_grad():
        for i in (0, 2, 4):
            twin[i].weight.copy_(dequantize_weight(model.adapter_layers[str(i)].base_layer))
    reference = adapt(twin, FOUR_BIT)
    with torch.no_grad():
        for (_, p), (_, q) in zip(
            reference.adapter_parameters(), model.adapter_parameters(), strict=True
        ):
            p.copy_(q)
    expected = _grads(reference, x)
    for name, grad in got.items():
        assert grad is not None, name
        bound = 1e-5 * float(expected[name].abs().max())
        torch.testing.assert_close(grad, expected[name], atol=bound, rtol=1e-5)


def test_4bit_llama_trains_after_an_evaluation_pass():
    """The issue's case (a 4-bit Llama): gradients after one no-grad forward against a twin
    whose 4-bit layers are float layers holding the same weights (bound as above)."""
    pytest.importorskip("bitsandbytes")
    from tests.adapters.test_quantized import config, ids, perturb, quantized_llama

    def evaluated(model: nn.Module) -> nn.Module:
        model.eval()
        with torch.no_grad():
            model(input_ids=tokens)  # bitsandbytes may repack the 4-bit weights here
        return model

    def grads(model: AdaptedModel) -> dict[str, torch.Tensor | None]:
        model.train()
        model(input_ids=tokens, labels=tokens).loss.backward()
        return {name: p.grad for name, p in model.adapter_parameters()}

    tokens = ids()
    model = evaluated(adapt(quantized_llama("nf4"), config("tera")))
    perturb(model)  # every d away from its zero init: every gradient nonzero
    twin = adapt(dequantize_model(evaluated(quantized_llama("nf4"))), config("tera"))
    perturb(twin)
    got, expected = grads(model), grads(twin)
    for name, grad in got.items():
        assert grad is not None and bool(grad.abs().sum() > 0), name
        bound = 1e-5 * float(expected[name].abs().max())
        torch.testing.assert_close(grad, expected[name], atol=bound, rtol=1e-5)


def test_keep_input_gradient_unpacks_a_repacked_weight_losslessly():
    """On any CPU: the repack done by hand, then undone only where a gradient is needed."""
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    layer = quantize_model(nn.Sequential(nn.Linear(128, 64)), "4bit", double_quant=True)[0]
    weight = layer.weight
    weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        weight.data, weight.quant_state
    )
    packed = dequantize_weight(layer).clone()
    x = torch.randn(2, 128, requires_grad=True)
    layer.eval()
    with torch.no_grad():
        assert not keep_input_gradient(layer, x)  # inference: stays packed
    assert not keep_input_gradient(layer, x.detach())  # eval, no gradient wanted
    assert weight.quant_state.packing_format_for_cpu
    assert keep_input_gradient(layer, x)  # eval, but a gradient towards x is recorded
    assert not weight.quant_state.packing_format_for_cpu
    assert torch.equal(dequantize_weight(layer), packed)  # the same weight, canonical layout
    layer(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
        weight.data, weight.quant_state
    )
    layer.train()
    with torch.no_grad():
        assert keep_input_gradient(layer, x.detach())  # training mode: the exact kernel


# -- defect 6: every file-system and format fault is our error, naming the path -------------
def _listing(directory) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_saving_to_a_path_that_is_a_file(tmp_path):
    """Found: a FileExistsError."""
    model = adapt(llama(), make_config("tera", "llama"))
    target = tmp_path / "file"
    target.write_text("mine")
    with pytest.raises(SaveError, match=rf"cannot save into {target}: it is a file"):
        model.save_pretrained(target)
    assert target.read_text() == "mine"


def test_saving_several_adapters_where_a_subfolder_is_a_file_writes_nothing(tmp_path):
    """Found: "default" was written, then a FileExistsError: half a save."""
    model = _two_adapters()
    _scramble(model, seed=1)
    model.save_pretrained(tmp_path / "x", selected_adapters=["default"])
    (tmp_path / "x" / "b").write_text("mine")
    before = _listing(tmp_path / "x")
    _scramble(model, seed=2)
    with pytest.raises(SaveError, match=rf"{tmp_path / 'x' / 'b'}: it is a file.*nothing was"):
        model.save_pretrained(tmp_path / "x")
    assert _listing(tmp_path / "x") == before  # "default" is the previous save's, untouched


def test_saving_into_a_read_only_folder(tmp_path, monkeypatch):
    """Found: a SafetensorError naming a temporary file."""
    model = adapt(llama(), make_config("tera", "llama"))
    model.save_pretrained(tmp_path)
    before = _listing(tmp_path)
    os.chmod(tmp_path, 0o555)
    if os.geteuid() == 0:  # permissions do not bind root: refuse the way the kernel would
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == tmp_path:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr("tera.adapters.atomic.os.mkdir", mkdir)
    try:
        with pytest.raises(
            SaveError,
            match=rf"cannot save into {tmp_path} \(Permission denied.*\): choose a folder you can "
            "write to.*unchanged",
        ):
            model.save_pretrained(tmp_path)
    finally:
        os.chmod(tmp_path, 0o755)
    assert _listing(tmp_path) == before


def test_a_full_disk_while_writing_the_weights_is_our_error(tmp_path, monkeypatch):
    model = adapt(llama(), make_config("tera", "llama"))
    model.save_pretrained(tmp_path)
    before = _listing(tmp_path)

    def save_file(tensors, path, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr("tera.adapters.io.save_file", save_file)
    with pytest.raises(SaveError, match=rf"cannot save into {tmp_path} .*No space left"):
        model.save_pretrained(tmp_path)
    assert _listing(tmp_path) == before


def test_an_adapter_name_that_is_no_folder_name_cannot_be_saved(tmp_path):
    model = adapt(llama(), make_config("tera", "llama"))
    model.add_adapter("a/b", make_config("tera", "llama"))
    with pytest.raises(SaveError, match=r"adapter 'a/b' .*rename the adapter"):
        model.save_pretrained(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: [], "holds a JSON array, not an object"),
        (lambda meta: None, "holds a JSON null, not an object"),
        (lambda meta: {k: v for k, v in meta.items() if k != "targets"}, "has no 'targets'"),
        (lambda meta: {k: v for k, v in meta.items() if k != "config"}, "has no 'config'"),
        (
            lambda meta: {k: v for k, v in meta.items() if k != "factor_fingerprint"},
            "has no 'factor_fingerprint'",
        ),
        (lambda meta: {**meta, "targets": []}, "has no 'targets'"),
        (lambda meta: {**meta, "targets": {}}, "has no 'targets'"),
        (lambda meta: {**meta, "config": {**meta["config"], "in_mode": 0}}, "in_mode"),
        (lambda meta: {**meta, "modules_to_save": ["nowhere"]}, "module 'nowhere'"),
    ],
    ids=[
        "list",
        "null",
        "no-targets",
        "no-config",
        "no-fingerprint",
        "targets-list",
        "targets-empty",
        "bad-config-field",
        "unknown-module",
    ],
)
def test_a_malformed_config_is_our_error_naming_the_file(tmp_path, edit, message):
    """Found: AttributeError / KeyError from io.py for each of the first six."""
    model = adapt(llama(), make_config("tera", "llama"))
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps(edit(meta)))
    for load in (
        lambda: from_pretrained(llama(), tmp_path),
        lambda: model.load_adapter(tmp_path, adapter_name="other"),
        lambda: model.load_adapter_weights(tmp_path),
    ):
        with pytest.raises(
            LoadError, match=rf"{tmp_path}.*{re.escape(message)}|{re.escape(message)}.*{tmp_path}"
        ):
            load()
    assert model.adapter_names == ["default"]


def test_the_files_of_two_saves_are_refused(tmp_path):
    model = adapt(llama(), make_config("tera", "llama"))
    model.save_pretrained(tmp_path / "one")
    randomize_adapter(model, seed=5)
    model.save_pretrained(tmp_path / "two")
    (tmp_path / "two" / CONFIG_NAME).write_bytes((tmp_path / "one" / CONFIG_NAME).read_bytes())
    with pytest.raises(LoadError, match="come from two different saves"):
        from_pretrained(llama(), tmp_path / "two")


@pytest.mark.parametrize("kind", ["tera", "vera", "lora", "hira"])
@pytest.mark.parametrize("shape", [(0, 64), (0, 3, 64), (2, 0, 64)])
def test_a_mixed_batch_without_rows_or_tokens_gives_what_nn_linear_gives(kind, shape):
    """Defect 7 for mixed batches: zero rows (or zero tokens) return nn.Linear's empty output."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    config = _mlp_config(kind)
    model = adapt(base, config, adapter_name="a")
    model.add_adapter("b", config)
    x = torch.randn(*shape)
    names = ["a", "b"][: shape[0]] if shape[0] else []
    with torch.no_grad():
        got = model(x, adapter_names=names)
        want = model.base_model[0].base_layer(x)
    assert got.shape == want.shape == (*shape[:-1], 64)


def _mlp_config(kind):
    from tera.adapters import HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig

    return {
        "tera": TeRAConfig(in_mode=8, out_mode=2, target_modules=["0"]),
        "vera": VeRAConfig(r=8, target_modules=["0"]),
        "lora": LoRAConfig(r=4, target_modules=["0"]),
        "hira": HiRAConfig(r=4, target_modules=["0"]),
    }[kind]

"""TeRA through Hugging Face ``Trainer``: checkpoints, resuming, loading, gradient checkpointing.

The resumed run restores the optimizer, scheduler and RNG states from the checkpoint and
the d's from the adapter files, then sees the same batches as the uninterrupted run: the
arithmetic is identical, so the d's are compared for exact equality.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

from tera.adapters import TeRAConfig, adapt, from_pretrained
from tera.adapters.trainer import AdapterTrainer
from tera.errors import LoadError
from tests.adapters.common import llama

STEPS, SAVE_STEPS = 4, 2
CONFIG = TeRAConfig(in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"])


def _base() -> torch.nn.Module:
    return llama(vocab_size=64).train()


def _data() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": row, "labels": row} for row in ids]


def _args(out, **extra) -> TrainingArguments:
    settings = {
        "output_dir": str(out),
        "use_cpu": True,
        "report_to": [],
        "max_steps": STEPS,
        "save_steps": SAVE_STEPS,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-2,
        "seed": 0,
        "disable_tqdm": True,
    }
    return TrainingArguments(**{**settings, **extra})


def _ds(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.adapter_parameters()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer")
    model = adapt(_base(), CONFIG)
    init = _ds(model)
    AdapterTrainer(model=model, args=_args(out), train_dataset=_data()).train()
    return out, model, init


def test_checkpoints_hold_the_adapter_not_the_base_model(uninterrupted):
    out, model, init = uninterrupted
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]
    files = set(os.listdir(out / "checkpoint-2"))
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= files
    assert not {"model.safetensors", "pytorch_model.bin"} & files
    size = (out / "checkpoint-2" / "adapter_model.safetensors").stat().st_size
    assert size < 4096  # 164 float32 d's and a header, not the 100k base weights
    trained = _ds(model)
    assert all(not torch.equal(trained[n], init[n]) for n in trained if n.endswith(".d.0"))


def test_resuming_reaches_the_same_ds_as_an_uninterrupted_run(uninterrupted, tmp_path):
    out, model, _ = uninterrupted
    resumed = adapt(_base(), CONFIG)
    trainer = AdapterTrainer(model=resumed, args=_args(tmp_path), train_dataset=_data())
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == STEPS
    expected, got = _ds(model), _ds(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_the_checkpoint_loads_with_from_pretrained_to_identical_outputs(uninterrupted):
    out, model, _ = uninterrupted
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():  # inference on both sides: the engine takes the same path
        expected = model(input_ids=ids).logits
        loaded = from_pretrained(_base(), out / "checkpoint-4")
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    assert not torch.equal(_base()(input_ids=ids).logits, expected)  # the adapter matters


def test_resuming_into_another_adapter_config_is_refused(uninterrupted, tmp_path):
    out, _, _ = uninterrupted
    other = adapt(_base(), dataclasses.replace(CONFIG, seed=1))
    trainer = AdapterTrainer(model=other, args=_args(tmp_path), train_dataset=_data())
    with pytest.raises(LoadError, match=r"was saved with TeRAConfig\(.*seed=0.*load it with"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_adapter_trainer_rejects_models_without_an_adapter(tmp_path):
    trainer = AdapterTrainer(model=_base(), args=_args(tmp_path), train_dataset=_data())
    with pytest.raises(TypeError, match="returned by tera.adapters.adapt"):
        trainer.save_model(str(tmp_path / "x"))


def test_a_plain_trainer_trains_the_adapter_too(tmp_path):
    """``AdaptedModel.forward`` shows the base signature, so Trainer keeps ``input_ids``."""
    model = adapt(_base(), CONFIG)
    init = _ds(model)
    args = _args(tmp_path, max_steps=1, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=_data()).train()
    assert any(not torch.equal(p, init[n]) for n, p in _ds(model).items())
    base_frozen = [p for n, p in model.named_parameters() if "adapter" not in n]
    assert base_frozen and not any(p.requires_grad for p in base_frozen)


def _enable_checkpointing(model) -> None:
    # transformers >= 5 renames gradient_checkpointing_enable (kept, deprecated) to this
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable()


def _grads(model, ids) -> tuple[dict[str, torch.Tensor], int]:
    calls = []
    layer = model.adapter_layers["model.layers.0.self_attn.q_proj"]
    handle = layer.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in model.adapter_parameters()}
    model.zero_grad()
    return grads, len(calls)


def test_gradient_checkpointing_gives_the_same_gradients_to_the_ds():
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    model = adapt(_base(), CONFIG)
    with torch.no_grad():  # d's away from init, so every d gets a non-zero gradient
        for _, p in model.adapter_parameters():
            p.add_(0.1)
    plain, plain_calls = _grads(model, ids)
    _enable_checkpointing(model)  # through the AdaptedModel pass-through to the base model
    ckpt, ckpt_calls = _grads(model, ids)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the layer really was recomputed in backward
    assert plain.keys() == ckpt.keys()
    for name, g in plain.items():
        assert float(g.abs().max()) > 0, name
        torch.testing.assert_close(ckpt[name], g, rtol=1e-6, atol=1e-9)


def test_adapter_trainer_resumes_from_a_plain_trainer_checkpoint(tmp_path):
    """A checkpoint of ``transformers.Trainer`` (the full state dict) resumes too."""
    plain = adapt(_base(), CONFIG)
    args = _args(tmp_path / "plain", max_steps=2, save_steps=1)
    Trainer(model=plain, args=args, train_dataset=_data()).train()
    assert "model.safetensors" in os.listdir(tmp_path / "plain" / "checkpoint-1")
    resumed = adapt(_base(), CONFIG)
    args = _args(tmp_path / "resumed", max_steps=2, save_steps=1)
    trainer = AdapterTrainer(model=resumed, args=args, train_dataset=_data())
    trainer.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-1"))
    expected, got = _ds(plain), _ds(resumed)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert "adapter_model.safetensors" in os.listdir(tmp_path / "resumed" / "checkpoint-2")

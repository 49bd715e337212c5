"""PEFT adapter folders, both ways: PEFT's LoRA, VeRA and HiRA load into tera with PEFT's
outputs, tera's save as PEFT folders that PEFT loads with tera's outputs, and what has no
counterpart is refused by name."""

import json

import pytest
import torch
from peft import HiraConfig, IA3Config, LoraConfig, PeftModel, VeraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from tera.adapters import (
    AdaptedModel,
    AdapterLinear,
    HiRAConfig,
    LoRAConfig,
    TeRAConfig,
    VeRAConfig,
    adapt,
    io,
    saving,
)
from tera.adapters.peft_format import is_peft_folder, read_peft, write_peft
from tera.errors import FormatError, LoadError
from tests.adapters.common import ATOL, RTOL, inputs, llama, randomize_adapter, run

TARGETS = ["q_proj", "v_proj"]  # v_proj is 32 -> 16: two output sizes
ONE_SHAPE = ["q_proj", "o_proj"]  # both 32 -> 32
KINDS = ("lora", "vera", "hira")


def peft_config(kind, **extra):
    if kind == "lora":
        return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, **extra)
    if kind == "vera":
        return VeraConfig(r=8, target_modules=TARGETS, **extra)
    return HiraConfig(r=4, target_modules=TARGETS, **extra)


def our_config(kind, **extra):
    if kind == "lora":
        return LoRAConfig(r=4, alpha=16, dropout=0.1, target_modules=TARGETS, **extra)
    if kind == "vera":  # tera's per-shape projections fit PEFT's one pair for one shape only
        return VeRAConfig(r=8, seed=3, target_modules=ONE_SHAPE, **extra)
    return HiRAConfig(r=4, target_modules=TARGETS, **extra)


@torch.no_grad()
def peft_saved(tmp_path, kind, **extra):
    """A PEFT model with random non-zero trainable weights, saved to ``tmp_path``."""
    model = get_peft_model(llama(), peft_config(kind, **extra)).eval()
    g = torch.Generator().manual_seed(0)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(tmp_path)
    return model


@torch.no_grad()
def peft_logits(model, batch):
    return model(**batch).logits


@pytest.mark.parametrize("kind", KINDS)
def test_a_peft_folder_loads_with_peft_outputs(kind, tmp_path):
    theirs = peft_saved(tmp_path, kind)
    batch = inputs("llama")
    assert is_peft_folder(tmp_path)
    ours = AdaptedModel.from_pretrained(llama(), tmp_path)
    assert ours.adapter_config.kind == kind
    assert ours.trainable_parameter_count() == 0  # frozen for inference, as tera's own
    torch.testing.assert_close(
        run(ours, "llama", batch), peft_logits(theirs, batch), atol=ATOL, rtol=RTOL
    )
    # read_peft gives exactly what tera's own save (factors included) of that adapter holds
    meta, tensors = read_peft(tmp_path, llama())
    ours.save_pretrained(tmp_path / "tera", include_factors=True)
    assert meta == io.read_meta(tmp_path / "tera")
    saved = io.read_tensors(tmp_path / "tera")
    assert sorted(tensors) == sorted(saved)
    for name, t in saved.items():
        assert torch.equal(tensors[name], t), name


@pytest.mark.parametrize("kind", KINDS)
def test_tera_saves_a_peft_folder_that_peft_loads_with_our_outputs(kind, tmp_path):
    ours = adapt(llama(), our_config(kind)).eval()  # eval: LoRA's dropout is 0.1
    randomize_adapter(ours)
    ours.save_pretrained(tmp_path, format="peft")
    assert is_peft_folder(tmp_path)
    theirs = PeftModel.from_pretrained(llama(), tmp_path).eval()
    batch = inputs("llama")
    expected = run(ours, "llama", batch)
    torch.testing.assert_close(peft_logits(theirs, batch), expected, atol=ATOL, rtol=RTOL)
    # and back: the config (seed included) and the outputs come through unchanged
    back = AdaptedModel.from_pretrained(llama(), tmp_path).eval()
    assert back.adapter_config == ours.adapter_config
    torch.testing.assert_close(run(back, "llama", batch), expected, atol=ATOL, rtol=RTOL)


def test_a_vera_from_peft_saves_back_to_peft(tmp_path):
    """PEFT's nested projections (v_proj's B is the top of q_proj's) survive the trip."""
    theirs = peft_saved(tmp_path / "peft", "vera")
    ours = AdaptedModel.from_pretrained(llama(), tmp_path / "peft")
    ours.save_pretrained(tmp_path / "again", format="peft")
    for name, t in load_file(tmp_path / "peft" / io.WEIGHTS_NAME).items():
        assert torch.equal(load_file(tmp_path / "again" / io.WEIGHTS_NAME)[name], t), name
    again = PeftModel.from_pretrained(llama(), tmp_path / "again").eval()
    batch = inputs("llama")
    torch.testing.assert_close(peft_logits(again, batch), peft_logits(theirs, batch))


def test_modules_to_save_cross_both_ways(tmp_path):
    theirs = peft_saved(tmp_path / "peft", "lora", modules_to_save=["lm_head"])
    batch = inputs("llama")
    ours = AdaptedModel.from_pretrained(llama(), tmp_path / "peft")
    assert ours.modules_to_save == ["lm_head"]
    torch.testing.assert_close(
        run(ours, "llama", batch), peft_logits(theirs, batch), atol=ATOL, rtol=RTOL
    )
    ours.save_pretrained(tmp_path / "back", format="peft")
    again = PeftModel.from_pretrained(llama(), tmp_path / "back").eval()
    torch.testing.assert_close(
        peft_logits(again, batch), peft_logits(theirs, batch), atol=ATOL, rtol=RTOL
    )


def test_tera_and_unknown_formats_are_refused_and_write_nothing(tmp_path):
    tera = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=TARGETS))
    with pytest.raises(FormatError, match="TeRA adapter has no PEFT format"):
        tera.save_pretrained(tmp_path / "tera", format="peft")
    with pytest.raises(FormatError, match="format must be 'tera' or 'peft'"):
        tera.save_pretrained(tmp_path / "onnx", format="onnx")
    assert not (tmp_path / "tera").exists() and not (tmp_path / "onnx").exists()
    assert issubclass(FormatError, ValueError)


def test_a_vera_with_projections_of_several_sizes_is_refused(tmp_path):
    """tera draws a pair per size: v_proj's B (16 x r) is no slice of q_proj's (32 x r)."""
    ours = adapt(llama(), VeRAConfig(r=8, target_modules=TARGETS))
    with pytest.raises(FormatError, match="no rank-r PEFT VeRA computes this model"):
        ours.save_pretrained(tmp_path, format="peft")
    with pytest.raises(FormatError, match="include_factors=True"):
        write_peft(
            tmp_path,
            saving.adapter_meta(ours, False, "default"),
            saving.adapter_state(ours, False, "default"),
        )
    assert not (tmp_path / io.CONFIG_NAME).exists()


@pytest.mark.parametrize(
    ("kind", "extra", "phrase"),
    [
        ("lora", {"use_dora": True}, "use_dora=True"),
        ("lora", {"use_rslora": True}, "use_rslora=True"),
        ("lora", {"rank_pattern": {"q_proj": 2}}, "rank_pattern="),
        ("lora", {"alpha_pattern": {"q_proj": 2}}, "alpha_pattern="),
        ("lora", {"bias": "lora_only"}, "bias='lora_only'"),
        ("hira", {"rank_pattern": {"q_proj": 2}}, "rank_pattern="),
        ("vera", {"save_projection": False}, "save_projection=False"),
    ],
)
def test_peft_options_tera_does_not_implement_are_refused(kind, extra, phrase, tmp_path):
    peft_saved(tmp_path, kind, **extra)
    base = llama()
    with pytest.raises(LoadError, match=phrase):
        AdaptedModel.from_pretrained(base, tmp_path)
    assert not any(isinstance(m, AdapterLinear) for m in base.modules())


def _edit_config(tmp_path, **fields):
    path = tmp_path / io.CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(fields)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"peft_type": "LOHA"}, "peft_type='LOHA'"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
        ({"some_future_option": 3}, "some_future_option=3"),
    ],
)
def test_edited_peft_configs_are_refused(fields, phrase, tmp_path):
    peft_saved(tmp_path, "lora")
    _edit_config(tmp_path, **fields)
    with pytest.raises(LoadError, match=phrase):
        AdaptedModel.from_pretrained(llama(), tmp_path)


def test_another_peft_method_is_refused(tmp_path):
    get_peft_model(
        llama(), IA3Config(target_modules=TARGETS, feedforward_modules=[])
    ).save_pretrained(tmp_path)
    with pytest.raises(LoadError, match="peft_type='IA3'; tera reads PEFT's HIRA, LORA, VERA"):
        AdaptedModel.from_pretrained(llama(), tmp_path)


def test_bad_tensors_are_refused(tmp_path):
    peft_saved(tmp_path, "lora")
    weights = tmp_path / io.WEIGHTS_NAME
    good = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({**good, key: torch.full_like(good[key], float("nan"))}, weights)
    with pytest.raises(LoadError, match="NaN/inf"):
        AdaptedModel.from_pretrained(llama(), tmp_path)
    save_file({**good, "model.layers.0.self_attn.q_proj.lora_A.weight": good[key].clone()}, weights)
    with pytest.raises(LoadError, match="does not start with 'base_model.model.'"):
        AdaptedModel.from_pretrained(llama(), tmp_path)
    save_file({**good, "base_model.model.model.embed_tokens.weight": torch.ones(100, 32)}, weights)
    with pytest.raises(LoadError, match="neither a LORA tensor of a layer"):
        AdaptedModel.from_pretrained(llama(), tmp_path)
    save_file({k: v for k, v in good.items() if k != key}, weights)
    with pytest.raises(LoadError, match="lacks"):
        AdaptedModel.from_pretrained(llama(), tmp_path)
    weights.unlink()
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(LoadError, match="reads only safetensors"):
        AdaptedModel.from_pretrained(llama(), tmp_path)


def test_a_peft_vera_needs_the_model_for_its_input_sizes(tmp_path):
    peft_saved(tmp_path, "vera")
    with pytest.raises(LoadError, match="pass the base model"):
        read_peft(tmp_path)
    meta, _ = read_peft(tmp_path, llama())
    assert meta["targets"]["model.layers.0.self_attn.v_proj"] == {
        "in_features": 32,
        "out_features": 16,
    }


def test_a_peft_folder_for_another_model_is_refused(tmp_path):
    peft_saved(tmp_path, "lora")
    other = llama()
    other.model.layers = other.model.layers[:1]
    with pytest.raises(LoadError, match="which this model does not have"):
        AdaptedModel.from_pretrained(other, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_peft_folders_join_a_model_of_many_adapters(tmp_path, kind):
    """load_adapter takes a PEFT folder too; its rows of a mixed batch give PEFT's logits."""
    peft_model = peft_saved(tmp_path / "peft", kind)
    ours = adapt(llama(), TeRAConfig(in_mode=32, out_mode=2, target_modules=TARGETS))
    randomize_adapter(ours, seed=5)
    ours.load_adapter(tmp_path / "peft", adapter_name="from-peft")
    batch = inputs("llama")
    with torch.no_grad():
        mixed = ours(**batch, adapter_names=["from-peft", "default"]).logits
        tera_only = ours(**{k: v[1:] for k, v in batch.items()}).logits
    torch.testing.assert_close(
        mixed[:1],
        peft_logits(peft_model, {k: v[:1] for k, v in batch.items()}),
        atol=ATOL,
        rtol=RTOL,
    )
    torch.testing.assert_close(mixed[1:], tera_only, atol=ATOL, rtol=RTOL)
    # and it saves back as a PEFT folder PEFT reads
    ours.save_pretrained(tmp_path / "again", selected_adapters=["from-peft"], format="peft")
    again = PeftModel.from_pretrained(llama(), tmp_path / "again" / "from-peft").eval()
    torch.testing.assert_close(peft_logits(again, batch), peft_logits(peft_model, batch))

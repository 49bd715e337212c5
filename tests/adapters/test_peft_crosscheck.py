"""Our LoRA, VeRA and HiRA compute what HF PEFT's do when given the same weights."""

import pytest
import torch
from peft import HiraConfig, LoraConfig, VeraConfig, get_peft_model

from tera.adapters import HiRAConfig, LoRAConfig, VeRAConfig, adapt
from tests.adapters.common import ATOL, RTOL, inputs, llama, randomize_adapter, run

TARGETS = ["q_proj", "v_proj"]


def _peft_module(peft_model, name):
    return peft_model.base_model.model.get_submodule(name)


@torch.no_grad()
def _copy_into_peft(ours, peft_model, kind):
    for name, layer in ours.adapter_layers.items():
        theirs = _peft_module(peft_model, name)
        a = layer.adapter
        if kind == "lora":
            theirs.lora_A["default"].weight.copy_(a.A)
            theirs.lora_B["default"].weight.copy_(a.B)
        elif kind == "hira":
            theirs.hira_A["default"].copy_(a.A)
            theirs.hira_B["default"].copy_(a.B)
        else:
            # PEFT slices one shared (r x max_in), (max_out x r) pair for every layer while we
            # keep one pair per shape, so the frozen factors go from PEFT into ours
            ours.shared_factors.set(a._key_A, theirs.vera_A["default"][:, : layer.in_features])
            ours.shared_factors.set(a._key_B, theirs.vera_B["default"][: layer.out_features, :])
            theirs.vera_lambda_b["default"].copy_(a.b)
            theirs.vera_lambda_d["default"].copy_(a.d)


CASES = {
    "lora": (
        LoRAConfig(r=4, alpha=8, target_modules=TARGETS),
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS),
    ),
    "vera": (VeRAConfig(r=8, target_modules=TARGETS), VeraConfig(r=8, target_modules=TARGETS)),
    "hira": (HiRAConfig(r=4, target_modules=TARGETS), HiraConfig(r=4, target_modules=TARGETS)),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_same_weights_give_peft_outputs(kind):
    ours_cfg, peft_cfg = CASES[kind]
    ours = adapt(llama(), ours_cfg)
    randomize_adapter(ours)
    peft_model = get_peft_model(llama(), peft_cfg).eval()
    _copy_into_peft(ours, peft_model, kind)
    batch = inputs("llama")
    expected = peft_model(**batch).logits
    for path in ("materialize", "push"):
        ours.set_engine_path(path)
        torch.testing.assert_close(run(ours, "llama", batch), expected, atol=ATOL, rtol=RTOL)
    # and the trainable counts agree with PEFT's
    assert ours.trainable_parameter_count() == peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("kind", sorted(CASES))
def test_merged_weights_match_peft_merge(kind):
    ours_cfg, peft_cfg = CASES[kind]
    ours = adapt(llama(), ours_cfg)
    randomize_adapter(ours)
    peft_model = get_peft_model(llama(), peft_cfg).eval()
    _copy_into_peft(ours, peft_model, kind)
    ours_merged = ours.merge_and_unload()
    peft_merged = peft_model.merge_and_unload()
    for name, p in ours_merged.state_dict().items():
        torch.testing.assert_close(p, peft_merged.state_dict()[name], atol=1e-6, rtol=1e-6)

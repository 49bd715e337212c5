"""A catalogue of bad input: each case raises a ``tera.errors`` exception whose message names
the bad value and says how to fix it (one test per case; each ``match`` checks both).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import tera.tn as tn
from tera.adapters import (
    LoRAConfig,
    TeRAConfig,
    adapt,
    config_from_dict,
    from_pretrained,
)
from tera.errors import (
    AdapterStateError,
    BackendError,
    ConfigError,
    DTypeError,
    FingerprintError,
    LoadError,
    MergeError,
    RankError,
    ShapeError,
    TargetError,
    TensorizationError,
    TeraError,
)
from tests.adapters.common import edit_meta, llama, make_config, mlp, randomize_adapter


def _linear(in_f: int = 16, out_f: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_f, out_f))


@pytest.fixture
def saved_dir(tmp_path):
    model = adapt(llama(), make_config("tera", "llama"))
    randomize_adapter(model)
    model.save_pretrained(tmp_path)
    return tmp_path


# -- tensorization and ranks -------------------------------------------------------------------


def test_dimension_not_splittable_into_the_mode_size():
    with pytest.raises(
        TensorizationError,
        match=r"in_features=24 with in_mode=4: 24 cannot be split into modes of 4; use one of "
        r"24, or pass explicit modes such as \(4, 3, 2\); set in_mode= or in_modes=",
    ):
        adapt(_linear(24, 16), TeRAConfig(in_mode=4, out_mode=4, target_modules=["0"]))


def test_mode_products_do_not_multiply_to_the_layer_dims():
    with pytest.raises(
        TensorizationError,
        match=r"in_modes \(4, 5\) multiply to 20 but layer '0' has in_features=16; "
        r"use a dict .* e.g. in_modes=\{16: \(16,\)\}",
    ):
        adapt(_linear(), TeRAConfig(in_modes=(4, 5), out_mode=4, target_modules=["0"]))


def test_ranks_larger_than_the_mode_sizes():
    with pytest.raises(
        RankError,
        match=r"ranks \(8, 2, 2\) do not fit layer '0' tensorized as \(4, 4, 4, 4\): "
        r"give one rank 1 <= R_i <= I_i per mode",
    ):
        adapt(_linear(), TeRAConfig(in_mode=4, out_mode=4, ranks=(8, 2, 2), target_modules=["0"]))


def test_rank_below_one():
    with pytest.raises(RankError, match=r"ranks must be ints >= 1, one per mode .* got \(4, 0\)"):
        TeRAConfig(ranks=(4, 0))


def test_lora_rank_zero():
    with pytest.raises(RankError, match=r"r must be an int >= 1, got 0"):
        LoRAConfig(r=0)


def test_zero_init_out_of_range():
    with pytest.raises(
        ConfigError,
        match=r"zero_init=7 is out of range for layer '0' with 4 modes \(4, 4, 4, 4\); "
        r"use 0..3 \(or -4..-1\)",
    ):
        adapt(_linear(), TeRAConfig(in_mode=4, out_mode=4, zero_init=7, target_modules=["0"]))


def test_mode_size_of_one():
    with pytest.raises(ConfigError, match=r"in_mode must be an int >= 2, got 1"):
        TeRAConfig(in_mode=1)


def test_modes_given_as_a_single_int():
    with pytest.raises(
        ConfigError,
        match=r"in_modes must be a non-empty sequence of sizes >= 1 such as \(8, 8, 9\)",
    ):
        TeRAConfig(in_modes=16)


# -- targets -----------------------------------------------------------------------------------


def test_unmatched_target_modules():
    with pytest.raises(
        TargetError,
        match=r"target_modules=\('q_proj',\) matched no module; the model's Linear layers "
        r"end in: 0, 2, 4",
    ):
        adapt(mlp(), LoRAConfig(target_modules=["q_proj"]))


def test_invalid_target_regex():
    with pytest.raises(
        TargetError,
        match=r"target_modules='\(\[' is not a valid regular expression .*; pass a list of "
        r"module names",
    ):
        LoRAConfig(target_modules="([")


def test_non_linear_target():
    with pytest.raises(
        TargetError,
        match=r"module '1' is a ReLU; adapters wrap torch.nn.Linear .* narrow target_modules",
    ):
        adapt(mlp(), LoRAConfig(target_modules=["1"]))


def test_adapting_twice():
    model = adapt(mlp(), make_config("lora", "mlp"))
    with pytest.raises(
        AdapterStateError,
        match=r"this model already carries an adapter; call unload\(\) or merge_and_unload\(\)",
    ):
        adapt(model.base_model, make_config("tera", "mlp"))


def test_config_of_the_wrong_type():
    with pytest.raises(
        ConfigError,
        match=r"config must be one of .* got 'tera' \(str\); build one, e.g. TeRAConfig",
    ):
        adapt(mlp(), "tera")


def test_target_layers_on_mixed_devices():
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16, device="meta"))
    with pytest.raises(
        BackendError,
        match=r"target layers live on different devices \(cpu, meta: .* move the model to one "
        r"device",
    ):
        adapt(model, TeRAConfig(in_mode=4, out_mode=4, target_modules=["0", "1"]))


def test_integer_weights():
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight = nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    with pytest.raises(
        DTypeError, match=r"torch.int8 weights; adapters need floating weights \(dequantize"
    ):
        adapt(model, LoRAConfig(target_modules=["0"]))


# -- merging -----------------------------------------------------------------------------------


def test_nan_in_the_adapter_at_merge():
    model = adapt(mlp(), make_config("tera", "mlp"))
    with torch.no_grad():
        model.adapter_layers["0"].adapter.d[0][0] = float("nan")
    with pytest.raises(
        MergeError, match=r"NaN/inf into the base weight \(dW holds non-finite values; check the"
    ):
        model.merge()


def test_inf_in_the_base_weight_at_merge():
    model = adapt(mlp(), make_config("lora", "mlp"))
    with torch.no_grad():
        model.base_model[0].base_layer.weight[0, 0] = float("inf")
    with pytest.raises(
        MergeError, match=r"\(the base weight already holds non-finite values; fix the base model"
    ):
        model.merge()


# -- saving and loading ------------------------------------------------------------------------


def test_loading_into_a_model_of_other_shapes(saved_dir):
    other = nn.Sequential()
    other.model = nn.Module()
    other.model.layers = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        block.self_attn = nn.Module()
        block.self_attn.q_proj = nn.Linear(64, 64)
        block.self_attn.v_proj = nn.Linear(64, 16)
        other.model.layers.append(block)
    with pytest.raises(
        LoadError,
        match=r"layer 'model.layers.0.self_attn.q_proj' is 64 -> 64 in this model but 32 -> 32 "
        r"in the saved adapter",
    ):
        from_pretrained(other, saved_dir)


def test_missing_safetensors_file(saved_dir):
    (saved_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(
        LoadError, match=r"no adapter_model.safetensors in .*; the adapter's weights are missing"
    ):
        from_pretrained(llama(), saved_dir)


def test_corrupted_safetensors_file(saved_dir):
    path = saved_dir / "adapter_model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(
        LoadError,
        match=r"adapter_model.safetensors cannot be read .*the file is corrupted or truncated: "
        r"save the adapter again with save_pretrained\(\)",
    ):
        from_pretrained(llama(), saved_dir)


def test_config_from_a_newer_format_version(saved_dir):
    edit_meta(saved_dir, format_version=2)
    with pytest.raises(
        LoadError, match=r"has format_version 2 but this tera reads up to 1; upgrade tera"
    ):
        from_pretrained(llama(), saved_dir)


def test_factor_fingerprint_mismatch(saved_dir):
    edit_meta(saved_dir, factor_fingerprint="ab" * 32)
    with pytest.raises(
        FingerprintError,
        match=r"\(\w{12}\.\.\. vs abababababab\.\.\.\).*Re-save the adapter with "
        r"include_factors=True",
    ):
        from_pretrained(llama(), saved_dir)


def test_tensor_of_the_wrong_shape_in_the_file(saved_dir):
    from safetensors.torch import load_file, save_file

    path = saved_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    name = next(iter(sorted(tensors)))
    tensors[name] = torch.zeros(3)
    save_file(tensors, str(path))
    with pytest.raises(LoadError, match=r"SHA-256 differs from the one recorded"):
        from_pretrained(llama(), saved_dir)  # the weights digest catches the edit first
    meta_path = saved_dir / "adapter_config.json"
    meta = json.loads(meta_path.read_text())
    del meta["weights_sha256"]  # a file written before digests: the shape check refuses it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LoadError, match=rf"tensor '{name}' has shape \(3,\) in the file but"):
        from_pretrained(llama(), saved_dir)


def test_unknown_adapter_kind_in_a_config_dict():
    with pytest.raises(
        LoadError, match=r"unknown adapter kind 'dora'; known kinds: hira, lora, tera, vera"
    ):
        config_from_dict({"kind": "dora", "r": 8})


def test_config_that_is_not_a_dict():
    with pytest.raises(
        LoadError, match=r"must be a dict such as \{'kind': 'tera', ...\}, got list"
    ):
        config_from_dict(["kind", "tera"])


def test_unknown_field_in_a_config_dict():
    with pytest.raises(
        LoadError, match=r"unknown field\(s\) \['rank'\].*\(was it written by a newer tera\?\)"
    ):
        config_from_dict({"kind": "lora", "rank": 4})


def test_non_numeric_lora_alpha():
    with pytest.raises(ConfigError, match=r"alpha must be a real number, got 'sixteen'"):
        LoRAConfig(alpha="sixteen")


# -- tera.tn -----------------------------------------------------------------------------------


def test_fold_with_a_shape_that_does_not_match():
    with pytest.raises(
        ShapeError,
        match=r"cannot fold a matrix of shape \(6, 4\) into \(2, 3, 5\) with k=1: expected a "
        r"matrix of shape \(2, 15\)",
    ):
        tn.fold(np.zeros((6, 4)), (2, 3, 5), 1)


def test_fold_with_arguments_in_the_wrong_order():
    with pytest.raises(
        BackendError,
        match=r"matrix must be a numpy.ndarray or a torch.Tensor, got tuple; convert it",
    ):
        tn.fold((2, 3, 4), np.zeros((6, 4)), 1)


def test_fold_with_a_fractional_size():
    with pytest.raises(
        ShapeError, match=r"shape must be a sequence of ints such as \(2, 3, 4\), got \(2, 3.5\)"
    ):
        tn.fold(np.zeros((2, 3)), (2, 3.5), 1)


def test_mode_index_out_of_range():
    with pytest.raises(
        ShapeError, match=r"mode 3 is out of range for an order-3 tensor; use 0..2 \(or -3..-1\)"
    ):
        tn.mode_unfold(np.zeros((2, 3, 4)), 3)


def test_unfold_k_out_of_range():
    with pytest.raises(ShapeError, match=r"k=-1 is out of range for an order-2 tensor; .* 0..2"):
        tn.unfold(np.zeros((2, 3)), -1)


def test_mode_product_with_a_matrix_of_the_wrong_shape():
    with pytest.raises(
        ShapeError,
        match=r"matrix of shape \(5, 3\) does not fit mode 1 .* needs 3 rows; .* pass matrix.T",
    ):
        tn.mode_product(np.zeros((2, 3, 4)), np.zeros((5, 3)), 1)


def test_multi_mode_product_with_modes_not_a_list():
    with pytest.raises(
        ShapeError,
        match=r"modes must be a sequence of ints, one per matrix, got 1; e.g. modes=\[1\]",
    ):
        tn.multi_mode_product(np.zeros((2, 3)), [np.zeros((3, 3))], modes=1)


def test_kron_apply_with_arguments_in_the_wrong_order():
    with pytest.raises(ShapeError, match=r"a single array of shape \(6,\); wrap it in a list"):
        tn.kron_apply(np.zeros(6), [np.eye(2), np.eye(3)])


def test_split_dim_of_a_string():
    with pytest.raises(TensorizationError, match=r"size must be an int, got '4096'"):
        tn.valid_mode_sizes("4096")


def test_hosvd_with_a_fractional_rank():
    with pytest.raises(
        RankError,
        match=r"ranks must be an int, a sequence of ints \(one per mode\) or None, got 2.5",
    ):
        tn.hosvd(np.ones((3, 3, 3)), ranks=2.5)


def test_tensors_on_mixed_devices():
    with pytest.raises(
        BackendError,
        match=r"torch inputs live on different devices \(\['cpu', 'meta'\]\); move them to one "
        r"device with .to\(device\)",
    ):
        tn.mode_product(torch.zeros(2, 3), torch.zeros(3, 3, device="meta"), 1)


def test_plan_with_a_negative_size():
    with pytest.raises(ShapeError, match=r"shape \(-1, 2\) given to plan 'ij->ji' has a negative"):
        tn.plan("ij->ji", (-1, 2))


def test_every_error_is_also_a_builtin_error():
    """``except ValueError`` / ``except TypeError`` keep working around tera."""
    for cls, builtin in [
        (ShapeError, ValueError),
        (RankError, ValueError),
        (LoadError, ValueError),
        (BackendError, TypeError),
        (DTypeError, TypeError),
        (ConfigError, TypeError),
        (ConfigError, ValueError),
    ]:
        assert issubclass(cls, TeraError) and issubclass(cls, builtin)


def test_input_of_the_wrong_width_for_an_adapted_layer():
    model = adapt(mlp(), make_config("tera", "mlp"))
    with pytest.raises(ShapeError, match=r"input of shape \(2, 7\).*in_features=16"):
        model(torch.randn(2, 7))

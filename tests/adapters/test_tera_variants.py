"""TeRA's frozen-factor variants: shared (default), unique per layer, identity; and the
paper's raw initialization. The paper's TeRA_unique (Table 8) and TeRA_iden (Figure 6)."""

import math

import pytest
import torch

from tera.adapters import TeRAConfig, adapt, from_pretrained
from tera.errors import ConfigError
from tests.adapters.common import llama, randomize_adapter

BATCH = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))


def _cfg(**extra):
    return TeRAConfig(in_mode=32, out_mode=2, target_modules=("q_proj", "v_proj"), **extra)


def _factor_ptrs(model, layer):
    adapter = model.adapter_layers[layer].adapter
    return [adapter._factor(k).data_ptr() for k in [adapter._key_G, *adapter._keys_A]]


def _q_layers(model):
    return sorted(n for n in model.adapter_layers if n.endswith("q_proj"))


@pytest.mark.parametrize("factors", ["shared", "unique", "identity"])
@pytest.mark.parametrize("init", ["normalized", "paper"])
def test_init_is_a_no_op_and_save_load_round_trips(factors, init, tmp_path):
    base = llama()
    expected = base(BATCH).logits
    model = adapt(llama(), _cfg(factors=factors, init=init))
    torch.testing.assert_close(model(BATCH).logits, expected, rtol=0, atol=0)
    randomize_adapter(model)
    moved = model(BATCH).logits
    assert not torch.allclose(moved, expected)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(llama(), tmp_path)
    torch.testing.assert_close(loaded(BATCH).logits, moved, rtol=0, atol=0)


def test_shared_factors_are_one_storage_unique_factors_are_per_layer():
    q0, q1 = _q_layers(adapt(llama(), _cfg()))
    shared = adapt(llama(), _cfg())
    assert _factor_ptrs(shared, q0) == _factor_ptrs(shared, q1)
    unique = adapt(llama(), _cfg(factors="unique"))
    a, b = _factor_ptrs(unique, q0), _factor_ptrs(unique, q1)
    assert all(x != y for x, y in zip(a, b))
    la, lb = (unique.adapter_layers[n].adapter for n in (q0, q1))
    assert not torch.equal(la._factor(la._keys_A[0]), lb._factor(lb._keys_A[0]))


def test_identity_factors_are_identities_and_dW_is_the_scaled_core():
    model = adapt(llama(), _cfg(factors="identity"))
    layer = model.adapter_layers[_q_layers(model)[0]]
    adapter = layer.adapter
    for key, size in zip(adapter._keys_A, adapter.modes):
        assert torch.equal(adapter._factor(key), torch.eye(size))
    with torch.no_grad():
        adapter.d[adapter.zero_index].fill_(1.0)
        dw = layer.delta_weight()
    core = adapter._factor(adapter._key_G)
    # dW (out x in) is the core's [N;k] unfolding, transposed
    torch.testing.assert_close(dw, core.reshape(32, -1).T, rtol=1e-6, atol=1e-7)
    rms = float(dw.pow(2).mean().sqrt())
    assert rms == pytest.approx(adapter.scale, rel=1e-3)


def test_paper_init_scale_depends_on_the_tensorization_normalized_does_not():
    def rms(**extra):
        model = adapt(llama(), TeRAConfig(target_modules=("q_proj",), **extra))
        layer = model.adapter_layers[_q_layers(model)[0]]
        with torch.no_grad():
            layer.adapter.d[layer.adapter.zero_index].fill_(1.0)
            return float(layer.delta_weight().pow(2).mean().sqrt())

    # raw draw: E[dW^2] = prod_i R_i * (1 / (3 I_i)) * 1 = 3^-N at full ranks
    # (32 | 32): N = 2, E[dW^2] = 1/9; (2,2,2,2,2 | 32): N = 6, E[dW^2] = 3^-6. One draw of
    # 1,024 entries: the rms of the 2-mode case lands within 20 %; the 6-mode one, a product
    # of many small random 2 x 2 factors, strays far more (this draw: 2.1x its expectation;
    # FINDINGS saw 4x), so it is only held within 4x.
    two = rms(in_mode=32, out_mode=32, init="paper")
    six = rms(in_mode=2, out_mode=32, init="paper")
    assert two == pytest.approx(1 / 3, rel=0.2)
    assert 0.25 < six / 3**-3 < 4
    assert two / six > 2  # the raw scale moves with the scheme
    # normalized: exactly 1/sqrt(in_features) for both (to the 16-bit rounded correction)
    assert rms(in_mode=32, out_mode=32) == pytest.approx(1 / math.sqrt(32), rel=1e-3)
    assert rms(in_mode=2, out_mode=32) == pytest.approx(1 / math.sqrt(32), rel=1e-3)


def test_bad_variant_values_are_refused():
    with pytest.raises(ConfigError, match="factors must be one of"):
        _cfg(factors="per-layer")
    with pytest.raises(ConfigError, match="init must be one of"):
        _cfg(init="kaiming")
    with pytest.raises(ConfigError, match="no effect with init='paper'"):
        _cfg(init="paper", scale=0.1)
    with pytest.raises(ConfigError, match="needs full ranks"):
        adapt(llama(), _cfg(factors="identity", ranks=(32, 2, 2, 1, 2, 2)))

"""TeRA specifics: tensorization schemes, the scale of dW, and that it learns at paper rates."""

import copy
import math

import pytest
import torch
from torch import nn

from tera.adapters import TeRAConfig, adapt
from tera.adapters.tera import resolve_scheme
from tera.errors import ConfigError, RankError, TensorizationError
from tera.theory import rank_bound
from tera.tn import tucker_to_matrix, tucker_to_tensor, unfold


def _layer(in_f, out_f, **cfg):
    torch.manual_seed(0)
    model = adapt(nn.Sequential(nn.Linear(in_f, out_f)), TeRAConfig(target_modules=["0"], **cfg))
    return model, model.adapter_layers["0"]


def test_paper_table9_scheme():
    assert resolve_scheme(TeRAConfig(in_mode=4096, out_mode=8), 4096, 4096)[:2] == (
        (4096, 8, 8, 8, 8),
        1,
    )
    # Llama-3's 1024-wide v_proj output with outdim=4096 stays whole
    assert resolve_scheme(TeRAConfig(in_mode=8, out_mode=4096), 4096, 1024)[:2] == (
        (8, 8, 8, 8, 1024),
        4,
    )
    modes, k, ranks, zero = resolve_scheme(
        TeRAConfig(in_modes={576: (8, 8, 9)}, out_mode=192), 576, 192
    )
    assert (modes, k, ranks, zero) == ((8, 8, 9, 192), 3, (8, 8, 9, 192), 3)


@pytest.mark.parametrize(
    "scheme",
    [
        dict(in_mode=256, out_mode=4),
        dict(in_mode=16, out_mode=16),
        dict(in_mode=4, out_mode=256),
        dict(in_mode=2, out_mode=2),
        dict(in_mode=256, out_mode=256),
        dict(in_modes=(8, 8, 4), out_modes=(16, 16), ranks=(4, 8, 4, 16, 2)),
    ],
)
def test_scale_of_dw_at_d_one_is_the_same_for_every_scheme(scheme):
    _, layer = _layer(256, 256, **scheme)
    with torch.no_grad():
        layer.adapter.d[layer.adapter.zero_index].fill_(1.0)
    dw = layer.delta_weight()
    rms = float(dw.detach().pow(2).mean().sqrt())
    # exactly 1/sqrt(in_features) up to the 16-bit rounding of the correction and float32 sums
    assert rms == pytest.approx(1 / math.sqrt(256), rel=1e-3)
    # relative to the base weight (torch's default init: std 1/sqrt(3 in)): about sqrt(3)
    assert rms / float(layer.base_weight().std()) == pytest.approx(math.sqrt(3), rel=0.05)


def test_explicit_scale():
    _, layer = _layer(64, 64, in_mode=8, out_mode=8, scale=0.02)
    with torch.no_grad():
        layer.adapter.d[-1].fill_(1.0)
    assert float(layer.delta_weight().detach().pow(2).mean().sqrt()) == pytest.approx(
        0.02, rel=1e-3
    )


def test_dw_is_the_papers_tucker_network():
    """Eq. (5)/(13): dW (torch out x in) is the transpose of unfold_[N;k] of the Tucker tensor."""
    _, layer = _layer(64, 16, in_mode=8, out_mode=4)
    a = layer.adapter
    with torch.no_grad():
        for d in a.d:
            d.copy_(torch.randn_like(d))
    net = a.network(layer.base_weight())
    G, factors = net.operands[0], list(net.operands[2::2])
    B = [d[:, None] * A for d, A in zip(a.d, factors)]
    paper = unfold(tucker_to_tensor(G, B), a.k)  # in x out, as x @ dW in the paper
    torch.testing.assert_close(layer.delta_weight(), paper.T, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tucker_to_matrix(G, B, a.k).T, paper.T, atol=1e-6, rtol=1e-5)
    assert torch.linalg.matrix_rank(layer.delta_weight()) == rank_bound(a.ranks, a.k) == 16


def test_zero_init_choice():
    for zero in (0, 1, -1):
        _, layer = _layer(64, 16, in_mode=8, out_mode=4, zero_init=zero)
        zeros = [i for i, d in enumerate(layer.adapter.d) if not d.any()]
        assert zeros == [zero % 4]
        assert not layer.delta_weight().any()


def test_learns_at_the_papers_learning_rate():
    """AdamW at lr 1e-3 fits a representable update within a few hundred steps (scale matters)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(64, 64))
    cfg = TeRAConfig(in_mode=64, out_mode=4, target_modules=["0"])
    teacher = adapt(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for d in teacher.adapter_layers["0"].adapter.d:
            d.copy_(1 + 0.5 * torch.randn_like(d))
    student = adapt(copy.deepcopy(base), cfg)
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=1e-3, weight_decay=0
    )
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(400):
        x = torch.randn(32, 64, generator=g)
        loss = (student(x) - teacher(x).detach()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < losses[0] / 4  # measured: 0.78 -> 0.14


@pytest.mark.parametrize(
    ("cfg", "error", "match"),
    [
        (
            dict(in_mode=6, out_mode=8),
            TensorizationError,
            r"in_features=64 with in_mode=6: 64 cannot be split into modes of 6; use one of 2, 4, 8, 64",
        ),
        (
            dict(in_modes=(8, 4), out_mode=8),
            TensorizationError,
            r"in_modes \(8, 4\) multiply to 32 but layer '0' has in_features=64; use a dict",
        ),
        (
            dict(in_mode=8, out_mode=8, ranks=(8, 9, 8, 8)),
            RankError,
            r"ranks \(8, 9, 8, 8\) do not fit layer '0' tensorized as \(8, 8, 8, 8\)",
        ),
        (
            dict(in_mode=8, out_mode=8, ranks=(8, 8)),
            RankError,
            r"give one rank 1 <= R_i <= I_i per mode",
        ),
        (
            dict(in_mode=8, out_mode=8, zero_init=4),
            ConfigError,
            r"zero_init=4 is out of range for layer '0' with 4 modes",
        ),
        (dict(in_mode=8, out_mode=8, zero_init=-5), ConfigError, r"use 0..3 \(or -4..-1\)"),
    ],
)
def test_bad_schemes_name_the_fix(cfg, error, match):
    with pytest.raises(error, match=match):
        _layer(64, 64, **cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(in_mode=1), r"in_mode must be an int >= 2, got 1"),
        (dict(out_mode=2.5), r"out_mode must be an int >= 2"),
        (dict(ranks=(0, 2)), r"ranks must be ints >= 1"),
        (dict(in_modes=(8, 0)), r"in_modes must be a non-empty sequence of sizes >= 1"),
        (dict(zero_init=1.0), r"zero_init must be an int"),
        (dict(scale=-1.0), r"scale must be > 0 or None"),
        (dict(seed=-1), r"seed must be an int >= 0"),
        (dict(dropout=1.5), r"dropout must lie in \[0, 1\)"),
        (dict(target_modules=[]), r"target_modules must be a regex string or a non-empty list"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeRAConfig(**kwargs)


def test_rank_is_measured_in_float64():
    """A (64 | 2, ..., 2) update is full rank, but so poorly conditioned that float32 hides it."""
    _, layer = _layer(64, 64, in_mode=64, out_mode=2)
    with torch.no_grad():
        for d in layer.adapter.d:
            d.copy_(1 + 0.5 * torch.randn_like(d))
    dw64 = layer.delta_weight(torch.float64)
    assert dw64.dtype == torch.float64
    torch.testing.assert_close(dw64.float(), layer.delta_weight().detach(), atol=1e-6, rtol=1e-4)
    assert layer.delta_rank() == rank_bound(layer.adapter.ranks, layer.adapter.k) == 64

"""Parameter counts and argument checking of tera.theory."""

import numpy as np
import pytest
import torch

from tera.errors import RankError, ShapeError, TensorizationError
from tera.theory import (
    hira_parameter_count,
    lora_parameter_count,
    params_percent,
    rank_bound,
    tera_error_bound,
    tera_modes,
    tera_parameter_count,
    vera_parameter_count,
)


def test_paper_counts_for_a_4096_layer():
    # Paper section 4: full rank 4096 x 4096 with (64,64 | 64,64) needs 256 values; (2,)*24 48
    assert tera_parameter_count(4096, 4096, in_mode=64, out_mode=64) == 256
    assert tera_parameter_count(4096, 4096, in_mode=2, out_mode=2) == 48
    assert tera_parameter_count(4096, 4096, in_mode=4096, out_mode=8) == 4096 + 32
    assert lora_parameter_count(4096, 4096, 32) == 32 * 8192
    assert hira_parameter_count(4096, 4096, 32) == 32 * 8192
    assert vera_parameter_count(4096, 1024, 256) == 1024 + 256


def test_tera_counts_with_explicit_modes_and_ranks():
    assert tera_parameter_count(576, 192, in_modes=(8, 8, 9), out_modes=(8, 8, 3)) == 25 + 19
    assert tera_parameter_count(64, 64, in_mode=8, out_mode=8, ranks=(4, 4, 2, 2)) == 12
    assert tera_modes(1024, 4096, in_mode=4096, out_mode=8) == ((1024, 8, 8, 8, 8), 1)


def test_params_percent_matches_paper_definition():
    assert params_percent(10, 90) == pytest.approx(10.0)
    assert params_percent(0, 5) == 0.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: rank_bound((4, 4), 2), ShapeError, r"k=2 must satisfy 1 <= k < N = 2"),
        (lambda: rank_bound((), 1), RankError, r"ranks is empty"),
        (lambda: rank_bound((4, 0), 1), RankError, r"contains \[0\]; every value must be >= 1"),
        (
            lambda: tera_modes(64, 64, in_mode=8),
            ShapeError,
            r"exactly one of out_mode= or out_modes=",
        ),
        (
            lambda: tera_modes(64, 64, in_mode=8, in_modes=(8, 8), out_mode=8),
            ShapeError,
            r"in_mode=",
        ),
        (
            lambda: tera_modes(64, 64, in_modes=(8, 4), out_mode=8),
            ShapeError,
            r"multiply to 32 but in_features is 64",
        ),
        (
            lambda: tera_modes(64, 48, in_mode=8, out_mode=8),
            TensorizationError,
            r"48 cannot be split into modes of 8",
        ),
        (
            lambda: tera_parameter_count(64, 64, in_mode=8, out_mode=8, ranks=(9, 8, 8, 8)),
            RankError,
            r"one rank 1..I_i",
        ),
        (
            lambda: tera_parameter_count(64, 64, in_mode=8, out_mode=8, ranks=(8, 8)),
            RankError,
            r"one rank 1..I_i",
        ),
        (lambda: lora_parameter_count(64, 64, 0), RankError, r">= 1"),
        (lambda: params_percent(0, 0), ShapeError, r"not both 0"),
        (lambda: params_percent(-1, 10), ShapeError, r"trainable >= 0"),
    ],
)
def test_theory_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _net():
    rng = np.random.default_rng(0)
    core = rng.standard_normal((2, 3, 2))
    factors = [
        rng.standard_normal((2, 2)),
        rng.standard_normal((3, 3)),
        rng.standard_normal((2, 4)),
    ]
    return core, factors


def test_error_bound_accepts_torch_inputs():
    core, factors = _net()
    W = np.random.default_rng(1).standard_normal((2, 12))
    a = tera_error_bound(W, core, factors, 1)
    b = tera_error_bound(
        torch.from_numpy(W), torch.from_numpy(core), [torch.from_numpy(f) for f in factors], 1
    )
    assert a.bound == pytest.approx(b.bound, rel=1e-12)


def test_error_bound_errors():
    core, factors = _net()
    W = np.zeros((2, 12))
    with pytest.raises(ShapeError, match=r"needs 3 factors, got 2"):
        tera_error_bound(W, core, factors[:2], 1)
    with pytest.raises(
        ShapeError, match=r"factors\[1\] has shape \(2, 3\); it must be R_2 x I_2 with R_2 = 3"
    ):
        tera_error_bound(W, core, [factors[0], factors[1][:, :2].T, factors[2]], 1)
    with pytest.raises(ShapeError, match=r"k=3 must satisfy"):
        tera_error_bound(W, core, factors, 3)
    with pytest.raises(
        ShapeError, match=r"W_star has shape \(12, 2\); with k=1 it must be \(2, 12\)"
    ):
        tera_error_bound(W.T, core, factors, 1)
    zero_core = core.copy()
    zero_core[0, 0, 0] = 0.0
    with pytest.raises(ShapeError, match=r"zero entries"):
        tera_error_bound(W, zero_core, factors, 1)
    with pytest.raises(ShapeError, match=r"must be a numpy array or torch tensor, got list"):
        tera_error_bound([[0.0]], core, factors, 1)

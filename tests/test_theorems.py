"""The paper's Theorems 1-3, checked on random instances (hypothesis, float64)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tera.theory import hira_parameter_count, rank_bound, tera_error_bound, tera_parameter_count
from tera.tn import split_dim, tucker_to_matrix, valid_mode_sizes
from tests.helpers import randn, seeds, shapes


@st.composite
def tera_networks(draw, min_size=1, max_size=7, max_order=6, max_elements=3000, full_rank=False):
    """Random frozen core/factors of a TeRA network: shape I, ranks R_i <= I_i, split k."""
    shape = draw(
        shapes(
            min_order=2,
            max_order=max_order,
            min_size=min_size,
            max_size=max_size,
            max_elements=max_elements,
        )
    )
    ranks = shape if full_rank else tuple(draw(st.integers(1, i)) for i in shape)
    k = draw(st.integers(1, len(shape) - 1))
    seed = draw(seeds)
    core = randn(ranks, seed)
    factors = [randn((r, i), seed + 1 + n) for n, (r, i) in enumerate(zip(ranks, shape))]
    return shape, ranks, k, core, factors, seed


def _tera_matrix(core, factors, ds, k):
    """Eq. (13)/(15): B_i = diag(d_i) A_i, unfolded with the first k modes as rows."""
    return tucker_to_matrix(core, [d[:, None] * a for d, a in zip(ds, factors)], k)


@given(net=tera_networks())
def test_theorem1_rank_bound_holds_with_equality_for_generic_draws(net):
    shape, ranks, k, core, factors, seed = net
    ds = [randn((r,), seed + 100 + n) for n, r in enumerate(ranks)]
    dW = _tera_matrix(core, factors, ds, k)
    assert dW.shape == (math.prod(shape[:k]), math.prod(shape[k:]))
    bound = rank_bound(ranks, k)
    assert bound == min(math.prod(ranks[:k]), math.prod(ranks[k:]))
    assert np.linalg.matrix_rank(dW) == bound  # <= is the theorem; == for generic draws


@given(net=tera_networks(), data=st.data())
def test_theorem1_zeros_in_d_shrink_the_rank(net, data):
    shape, ranks, k, core, factors, seed = net
    ds = []
    for n, r in enumerate(ranks):
        d = randn((r,), seed + 100 + n)
        zero = data.draw(st.lists(st.integers(0, r - 1), max_size=r - 1, unique=True))
        d[zero] = 0.0
        ds.append(d)
    nnz = [int(np.count_nonzero(d)) for d in ds]
    dW = _tera_matrix(core, factors, ds, k)
    assert np.linalg.matrix_rank(dW) == rank_bound(nnz, k)


def test_theorem1_full_rank_update_for_paper_scheme():
    # (64 | 8, 8): a 64 x 64 update from 80 trainable values is full rank
    rng = np.random.default_rng(0)
    shape = (64, 8, 8)
    core = rng.standard_normal(shape)
    factors = [rng.standard_normal((i, i)) for i in shape]
    ds = [np.ones(i) for i in shape]
    assert np.linalg.matrix_rank(_tera_matrix(core, factors, ds, 1)) == 64


@given(
    left=st.lists(st.integers(2, 64), min_size=1, max_size=6),
    right=st.lists(st.integers(2, 64), min_size=1, max_size=6),
)
def test_theorem2_sum_of_ranks_at_most_j1_plus_j2(left, right):
    J1, J2 = math.prod(left), math.prod(right)
    assert sum(left) + sum(right) <= J1 + J2
    count = tera_parameter_count(J2, J1, in_modes=right, out_modes=left)
    assert count == sum(left) + sum(right)
    assert count <= hira_parameter_count(J2, J1, r=1)  # HiRA r=1: J1 + J2


@given(size=st.sampled_from([64, 256, 576, 768, 1024, 4096]), data=st.data())
def test_theorem2_for_every_equal_mode_scheme(size, data):
    m_in = data.draw(st.sampled_from(valid_mode_sizes(size)))
    m_out = data.draw(st.sampled_from(valid_mode_sizes(size)))
    count = tera_parameter_count(size, size, in_mode=m_in, out_mode=m_out)
    assert count == sum(split_dim(size, m_in)) + sum(split_dim(size, m_out))
    assert count <= 2 * size


@given(net=tera_networks(max_order=4, max_elements=400))
def test_theorem3_rank1_vectors_meet_the_bound(net):
    shape, ranks, k, core, factors, seed = net
    W_star = randn((math.prod(shape[:k]), math.prod(shape[k:])), seed + 7)
    b = tera_error_bound(W_star, core, factors, k)
    err = np.linalg.norm(W_star - _tera_matrix(core, factors, b.vectors, k)) ** 2
    slack = 1e-9 * np.linalg.norm(W_star) ** 2  # float64 rounding of pinv and products
    assert err <= b.bound + slack
    assert b.subspace_error <= err + slack  # nothing beats the out-of-subspace part
    assert b.bound == pytest.approx(b.subspace_error + b.in_subspace_bound)


@given(net=tera_networks(max_order=4, max_elements=400))
def test_theorem3_bound_vanishes_for_a_representable_target(net):
    shape, ranks, k, core, factors, seed = net
    ds = [randn((r,), seed + 100 + n) for n, r in enumerate(ranks)]
    W_star = _tera_matrix(core, factors, ds, k)
    b = tera_error_bound(W_star, core, factors, k)
    scale = np.linalg.norm(W_star) ** 2
    assert b.subspace_error <= 1e-8 * scale
    # Z = d_1 o ... o d_N exactly, so the rank-1 residual vanishes
    assert b.in_subspace_bound <= 1e-6 * scale * (1 + b.g_max**2)

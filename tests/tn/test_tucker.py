import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given
from hypothesis import strategies as st
from tensorly.decomposition import tucker as tl_tucker

from tera.errors import RankError, ShapeError
from tera.tn import Tucker, hooi, hosvd, kron, tucker_to_matrix, tucker_to_tensor, unfold
from tests.helpers import BACKENDS, assert_close, randn, seeds, shapes, to_numpy


@st.composite
def tucker_parts(draw, backend="numpy", max_order=5, max_elements=2000):
    """A random core (R_1..R_N) and factors R_i x I_i with R_i <= I_i."""
    shape = draw(shapes(min_order=1, max_order=max_order, max_elements=max_elements))
    ranks = tuple(draw(st.integers(1, i)) for i in shape)
    seed = draw(seeds)
    core = randn(ranks, seed, backend)
    factors = [randn((r, i), seed + 1 + n, backend) for n, (r, i) in enumerate(zip(ranks, shape))]
    return core, factors


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_tucker_to_tensor_matches_tensorly(backend, data):
    core, factors = data.draw(tucker_parts(backend))
    out = tucker_to_tensor(core, factors)
    assert tuple(out.shape) == tuple(f.shape[1] for f in factors)
    expected = tl.tucker_to_tensor((to_numpy(core), [to_numpy(f).T for f in factors]))
    assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_kronecker_form_eq15_equals_unfolded_tucker_tensor(backend, data):
    core, factors = data.draw(tucker_parts(backend))
    k = data.draw(st.integers(0, core.ndim))
    full = unfold(tucker_to_tensor(core, factors), k)
    assert_close(tucker_to_matrix(core, factors, k), full)
    # and literally Eq. (15) with dense Kronecker products
    np_factors = [to_numpy(f) for f in factors]
    left = kron(np_factors[:k]).T if k else np.ones((1, 1))
    right = kron(np_factors[k:]) if k < core.ndim else np.ones((1, 1))
    assert_close(full, left @ unfold(to_numpy(core), k) @ right)


@given(data=st.data())
def test_tucker_to_matrix_gradients_match_finite_differences(data):
    core, factors = data.draw(tucker_parts("torch", max_order=4, max_elements=200))
    k = data.draw(st.integers(1, core.ndim))
    inputs = [core.requires_grad_(), *(f.requires_grad_() for f in factors)]
    assert torch.autograd.gradcheck(
        lambda g, *fs: tucker_to_matrix(g, list(fs), k), inputs, eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    shape=shapes(min_order=2, max_order=4, min_size=1, max_size=6, max_elements=500),
    seed=seeds,
    data=st.data(),
)
def test_hosvd_error_matches_tensorly(backend, shape, seed, data):
    T = randn(shape, seed, backend)
    ranks = [data.draw(st.integers(1, min(i, math.prod(shape) // i))) for i in shape]
    ours = hosvd(T, ranks)
    assert ours.ranks == tuple(ranks) and ours.shape == shape
    err = np.linalg.norm(to_numpy(T) - to_numpy(ours.to_tensor()))
    core, factors = tl_tucker(to_numpy(T), ranks, n_iter_max=0, init="svd", tol=0)
    theirs = np.linalg.norm(to_numpy(T) - tl.tucker_to_tensor((core, factors)))
    assert err == pytest.approx(theirs, rel=1e-7, abs=1e-9)
    for f in ours.factors:  # orthonormal rows
        assert_close(to_numpy(f) @ to_numpy(f).T, np.eye(f.shape[0]))


@given(data=st.data())
def test_hosvd_recovers_exact_low_multilinear_rank(data):
    core, factors = data.draw(tucker_parts(max_order=4, max_elements=800))
    T = tucker_to_tensor(core, factors)
    ranks = [min(r, math.prod(core.shape) // r) for r in core.shape]  # the true multilinear rank
    assert_close(hosvd(T, ranks).to_tensor(), T)
    assert_close(hooi(T, ranks).to_tensor(), T)


@given(
    shape=shapes(min_order=2, max_order=4, min_size=2, max_size=6, max_elements=600),
    seed=seeds,
    data=st.data(),
)
def test_hooi_is_never_worse_than_hosvd(shape, seed, data):
    T = randn(shape, seed)
    ranks = [data.draw(st.integers(1, min(i, math.prod(shape) // i))) for i in shape]
    e_hosvd = np.linalg.norm(T - hosvd(T, ranks).to_tensor())
    e_hooi = np.linalg.norm(T - hooi(T, ranks, n_iter=20).to_tensor())
    assert e_hooi <= e_hosvd * (1 + 1e-10) + 1e-12


def test_hooi_reaches_tensorly_optimum_on_a_fixed_case():
    T = np.random.default_rng(3).standard_normal((6, 5, 4))
    ours = np.linalg.norm(T - hooi(T, (3, 3, 2), n_iter=200, tol=0).to_tensor())
    core, factors = tl_tucker(T, [3, 3, 2], n_iter_max=200, init="svd", tol=0)
    theirs = np.linalg.norm(T - tl.tucker_to_tensor((core, factors)))
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_hosvd_full_rank_is_exact_and_torch_agrees():
    T = np.random.default_rng(0).standard_normal((3, 4, 5))
    assert_close(hosvd(T).to_tensor(), T)
    t = hosvd(torch.from_numpy(T), 2)
    n = hosvd(T, 2)
    assert isinstance(t.core, torch.Tensor)
    assert_close(t.core, n.core)  # deterministic signs: identical across backends


def test_tucker_container():
    t = Tucker(np.ones((2, 3)), [np.ones((2, 4)), np.ones((3, 5))])
    core, factors = t
    assert t.shape == (4, 5) and t.ranks == (2, 3)
    assert_close(t.to_matrix(1), t.to_tensor())


def test_tucker_errors_name_the_problem():
    G = np.zeros((2, 3))
    with pytest.raises(ShapeError, match=r"an order-2 core needs 2 factors, got 1"):
        tucker_to_tensor(G, [np.zeros((2, 4))])
    with pytest.raises(ShapeError, match=r"needs 3 rows \(pass f.T for a TensorLy-style"):
        tucker_to_matrix(G, [np.zeros((2, 4)), np.zeros((5, 3))], 1)
    T = np.zeros((3, 4, 5))
    with pytest.raises(RankError, match=r"rank R_2 = 5 is invalid for mode 1 .* 1..4"):
        hosvd(T, (2, 5, 2))
    with pytest.raises(RankError, match=r"rank R_1 = 0"):
        hosvd(T, 0)
    with pytest.raises(RankError, match=r"give one rank per mode"):
        hosvd(T, (2, 2))
    with pytest.raises(ShapeError, match=r"floating dtype, got int64"):
        hosvd(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ShapeError, match=r"n_iter must be an int >= 0"):
        hooi(T, 2, n_iter=-1)
    with pytest.raises(ShapeError, match=r"tol must be >= 0"):
        hooi(T, 2, tol=-1.0)
    with pytest.raises(RankError, match=r"1..2 \(the mode size, and at most the product"):
        hosvd(np.zeros((5, 2)), (3, 2))

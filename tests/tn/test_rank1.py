import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tera.errors import BackendError, ShapeError
from tera.tn import mode_unfold, rank1_approx, spectral_norm
from tera.tn.rank1 import _contract_all_but
from tests.helpers import BACKENDS, assert_close, randn, seeds, shapes, to_numpy


def _value_at(T, vectors):
    """Z x_1 u_1 ... x_N u_N."""
    v = _contract_all_but(T, vectors, 0)
    return float((v * vectors[0]).sum())


@given(
    shape=shapes(min_order=1, max_order=5, max_elements=1500), seed=seeds, scale=st.floats(0.1, 10)
)
def test_exact_rank1_tensor_is_recovered(shape, seed, scale):
    us = [randn((i,), seed + n) for n, i in enumerate(shape)]
    us = [u / np.linalg.norm(u) for u in us]
    T = scale * np.einsum(",".join("abcde"[: len(shape)]) + "->" + "abcde"[: len(shape)], *us)
    approx = rank1_approx(T)
    assert approx.scale == pytest.approx(scale, rel=1e-9)
    assert_close(approx.to_tensor(), T)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    shape=shapes(min_order=1, max_order=5, min_size=1, max_size=6, max_elements=1500), seed=seeds
)
def test_rank1_error_is_frobenius_minus_scale_squared(backend, shape, seed):
    T = randn(shape, seed, backend)
    approx = rank1_approx(T)
    for v in approx.vectors:
        assert float(np.linalg.norm(to_numpy(v))) == pytest.approx(1.0, rel=1e-12)
    err = np.linalg.norm(to_numpy(T) - to_numpy(approx.to_tensor())) ** 2
    expected = np.linalg.norm(to_numpy(T)) ** 2 - approx.scale**2
    assert err == pytest.approx(expected, rel=1e-7, abs=1e-9 * np.linalg.norm(to_numpy(T)) ** 2)
    assert approx.scale == pytest.approx(_value_at(T, approx.vectors), rel=1e-9)


@given(rows=st.integers(1, 8), cols=st.integers(1, 8), seed=seeds)
def test_spectral_norm_of_a_matrix_is_its_largest_singular_value(rows, cols, seed):
    M = randn((rows, cols), seed)
    assert spectral_norm(M) == pytest.approx(np.linalg.norm(M, 2), rel=1e-9)


@given(
    shape=shapes(min_order=3, max_order=5, min_size=2, max_size=6, max_elements=1500), seed=seeds
)
def test_spectral_norm_estimate_is_bracketed(shape, seed):
    T = randn(shape, seed)
    est = spectral_norm(T, n_restarts=2, seed=seed)
    # upper bound: the true norm is at most every mode-n unfolding's largest singular value
    upper = min(np.linalg.norm(mode_unfold(T, n), 2) for n in range(T.ndim))
    assert est <= upper * (1 + 1e-12)
    # HOPM only climbs: never below the value at its HOSVD starting point
    start = [np.linalg.svd(mode_unfold(T, n))[0][:, 0] for n in range(T.ndim)]
    assert est >= abs(_value_at(T, start)) * (1 - 1e-12)
    # and restarts only add candidates
    assert est >= spectral_norm(T) * (1 - 1e-12)


def test_torch_and_numpy_agree():
    T = np.random.default_rng(0).standard_normal((3, 4, 5))
    a, b = rank1_approx(T), rank1_approx(torch.from_numpy(T))
    assert a.scale == pytest.approx(b.scale, rel=1e-12)
    assert isinstance(b.vectors[0], torch.Tensor)
    assert spectral_norm(torch.from_numpy(T), n_restarts=1) >= b.scale * (1 - 1e-12)


def test_zero_tensor_has_zero_scale():
    assert rank1_approx(np.zeros((2, 3))).scale == 0.0


def test_rank1_errors_name_the_problem():
    with pytest.raises(ShapeError, match=r"no empty mode, got shape \(2, 0\)"):
        rank1_approx(np.zeros((2, 0)))
    with pytest.raises(ShapeError, match=r"floating dtype"):
        rank1_approx(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ShapeError, match=r"n_iter must be an int >= 1"):
        rank1_approx(np.zeros((2, 2)), n_iter=0)
    with pytest.raises(ShapeError, match=r"tol must be >= 0"):
        rank1_approx(np.zeros((2, 2)), tol=float("nan"))
    with pytest.raises(ShapeError, match=r"n_restarts must be an int >= 0"):
        spectral_norm(np.zeros((2, 2)), n_restarts=-1)
    with pytest.raises(BackendError):
        rank1_approx([1.0, 2.0])

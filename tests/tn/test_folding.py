import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given
from hypothesis import strategies as st

from tera.errors import BackendError, ShapeError, TensorizationError
from tera.tn import (
    fold,
    mode_fold,
    mode_unfold,
    split_dim,
    suggest_modes,
    unfold,
    valid_mode_sizes,
)
from tests.helpers import BACKENDS, assert_equal, randn, seeds, shapes, to_numpy


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(), seed=seeds, data=st.data())
def test_unfold_is_row_major_reshape(backend, shape, seed, data):
    T = randn(shape, seed, backend)
    k = data.draw(st.integers(0, len(shape)))
    M = unfold(T, k)
    assert tuple(M.shape) == (math.prod(shape[:k]), math.prod(shape[k:]))
    assert_equal(M, to_numpy(T).reshape(math.prod(shape[:k]), -1))
    assert type(M) is type(T)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(), seed=seeds, data=st.data())
def test_fold_inverts_unfold_exactly(backend, shape, seed, data):
    T = randn(shape, seed, backend)
    k = data.draw(st.integers(0, len(shape)))
    assert_equal(fold(unfold(T, k), shape, k), T)
    M = unfold(T, k)
    assert_equal(unfold(fold(M, shape, k), k), M)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(), seed=seeds, data=st.data())
def test_mode_unfold_matches_tensorly_exactly(backend, shape, seed, data):
    T = randn(shape, seed, backend)
    n = data.draw(st.integers(0, len(shape) - 1))
    assert_equal(mode_unfold(T, n), tl.unfold(to_numpy(T), n))
    assert_equal(mode_fold(mode_unfold(T, n), n, shape), T)
    # negative modes count from the end
    assert_equal(mode_unfold(T, n - len(shape)), mode_unfold(T, n))


def test_paper_eq1_index_map():
    # A_[N;k](i1..ik, ik+1..iN) = A(i1..iN), multi-indices in row-major order
    T = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    M = unfold(T, 2)
    for i1, i2, i3, i4 in np.ndindex(T.shape):
        assert M[i1 * 3 + i2, i3 * 5 + i4] == T[i1, i2, i3, i4]


def test_unfold_keeps_autograd():
    T = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    W = torch.randn(6, 4, dtype=torch.float64)
    (unfold(T, 2) * W).sum().backward()
    assert_equal(T.grad, W.reshape(2, 3, 4))


@given(m=st.integers(2, 9), p=st.integers(1, 5))
def test_split_dim_powers(m, p):
    assert split_dim(m**p, m) == (m,) * p


@given(size=st.integers(1, 5000), extra=st.integers(0, 100))
def test_split_dim_keeps_whole_when_mode_is_large(size, extra):
    assert split_dim(size, max(2, size + extra)) == (size,)


@given(size=st.integers(2, 5000))
def test_every_valid_mode_size_splits(size):
    for m in valid_mode_sizes(size):
        modes = split_dim(size, m)
        assert math.prod(modes) == size
        assert set(modes) == {m}


@given(size=st.integers(1, 5000), mode_size=st.integers(2, 64))
def test_suggest_modes_multiplies_back(size, mode_size):
    modes = suggest_modes(size, mode_size)
    assert math.prod(modes) == size
    for m in modes:  # a factor exceeds mode_size only when it is prime
        assert m <= mode_size or all(m % d for d in range(2, math.isqrt(m) + 1))


def test_split_dim_error_names_valid_sizes_and_explicit_modes():
    with pytest.raises(TensorizationError) as err:
        split_dim(4096, 6)
    assert str(err.value) == (
        "4096 cannot be split into modes of 6; use one of 2, 4, 8, 16, 64, 4096, "
        "or pass explicit modes such as (4, 4, 4, 4, 4, 4)"
    )
    with pytest.raises(TensorizationError, match=r"8, 8, 3, 3"):
        split_dim(576, 8)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("size", "mode_size", "match"),
    [
        (4096, 1, "mode_size must be >= 2"),
        (4096, 0, "mode_size must be >= 2"),
        (0, 8, "size must be >= 1"),
        (4096.0, 8, "size must be an int"),
        (4096, True, "mode_size must be an int"),
    ],
)
def test_split_dim_rejects_bad_arguments(size, mode_size, match):
    with pytest.raises(TensorizationError, match=match):
        split_dim(size, mode_size)


def test_valid_mode_sizes_examples():
    assert valid_mode_sizes(4096) == (2, 4, 8, 16, 64, 4096)
    assert valid_mode_sizes(1) == (1,)
    assert valid_mode_sizes(7) == (7,)
    assert valid_mode_sizes(1000) == (10, 1000)
    assert suggest_modes(1, 8) == (1,)
    assert suggest_modes(97, 8) == (97,)


def test_folding_errors_name_the_problem():
    T = np.zeros((2, 3, 4))
    with pytest.raises(ShapeError, match=r"k=4 is out of range for an order-3 tensor"):
        unfold(T, 4)
    with pytest.raises(ShapeError, match=r"k must be an int"):
        unfold(T, 1.5)
    with pytest.raises(ShapeError, match=r"expected a matrix of shape \(6, 4\)"):
        fold(np.zeros((4, 6)), (2, 3, 4), 2)
    with pytest.raises(ShapeError, match=r"mode 3 is out of range for an order-3 tensor"):
        mode_unfold(T, 3)
    with pytest.raises(ShapeError, match=r"mode must be an int"):
        mode_unfold(T, "0")
    with pytest.raises(ShapeError, match=r"expected shape \(3, 8\)"):
        mode_fold(np.zeros((8, 3)), 1, (2, 3, 4))
    with pytest.raises(ShapeError, match=r"negative size"):
        fold(np.zeros((1, 1)), (1, -1), 1)
    with pytest.raises(ShapeError, match=r"sequence of ints"):
        fold(np.zeros((1, 1)), 5, 1)
    with pytest.raises(BackendError, match=r"numpy.ndarray or a torch.Tensor, got list"):
        unfold([[1, 2]], 1)
    with pytest.raises(ShapeError, match="none: the tensor is 0-d"):
        mode_unfold(np.zeros(()), 0)


def test_zero_sized_modes_fold_and_unfold():
    T = np.zeros((2, 0, 3))
    assert unfold(T, 1).shape == (2, 0)
    assert mode_unfold(T, 1).shape == (0, 6)
    assert mode_unfold(T, 0).shape == (2, 0)
    assert fold(np.zeros((2, 0)), (2, 0, 3), 1).shape == (2, 0, 3)

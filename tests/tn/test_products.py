import math

import numpy as np
import pytest
import tensorly as tl
import torch
from hypothesis import given
from hypothesis import strategies as st

from tera.errors import BackendError, ShapeError
from tera.tn import khatri_rao, kron, kron_apply, mode_product, multi_mode_product
from tests.helpers import BACKENDS, assert_close, randn, seeds, shapes, to_numpy

sizes = st.integers(1, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(), j=sizes, seed=seeds, data=st.data())
def test_mode_product_matches_tensorly_mode_dot_of_transpose(backend, shape, j, seed, data):
    n = data.draw(st.integers(0, len(shape) - 1))
    T = randn(shape, seed, backend)
    B = randn((shape[n], j), seed + 1, backend)
    out = mode_product(T, B, n)
    assert type(out) is type(T)
    expected_shape = shape[:n] + (j,) + shape[n + 1 :]
    assert tuple(out.shape) == expected_shape
    assert_close(out, tl.tenalg.mode_dot(to_numpy(T), to_numpy(B).T, n))


def test_mode_product_follows_paper_eq3_elementwise():
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 5))
    C = mode_product(A, B, 1)
    for i1, j, i3 in np.ndindex(C.shape):
        assert np.isclose(C[i1, j, i3], sum(A[i1, i, i3] * B[i, j] for i in range(3)))


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(min_order=2), seed=seeds, data=st.data())
def test_multi_mode_product_matches_tensorly(backend, shape, seed, data):
    modes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    out_sizes = data.draw(st.lists(sizes, min_size=len(modes), max_size=len(modes)))
    T = randn(shape, seed, backend)
    Bs = [
        randn((shape[m], j), seed + 1 + i, backend)
        for i, (m, j) in enumerate(zip(modes, out_sizes))
    ]
    out = multi_mode_product(T, Bs, modes)
    expected = tl.tenalg.multi_mode_dot(to_numpy(T), [to_numpy(B).T for B in Bs], modes=modes)
    assert_close(out, expected)


@given(shape=shapes(min_order=2), seed=seeds, data=st.data())
def test_products_on_distinct_modes_commute(shape, seed, data):
    m1, m2 = data.draw(
        st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2, unique=True)
    )
    j1, j2 = data.draw(sizes), data.draw(sizes)
    T = randn(shape, seed)
    B1, B2 = randn((shape[m1], j1), seed + 1), randn((shape[m2], j2), seed + 2)
    one = mode_product(mode_product(T, B1, m1), B2, m2)
    other = mode_product(mode_product(T, B2, m2), B1, m1)
    assert_close(one, other)
    assert_close(multi_mode_product(T, [B2, B1], [m2, m1]), one)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=shapes(), j=sizes, l=sizes, seed=seeds, data=st.data())
def test_consecutive_products_on_one_mode_compose(backend, shape, j, l, seed, data):
    n = data.draw(st.integers(0, len(shape) - 1))
    T = randn(shape, seed, backend)
    B, C = randn((shape[n], j), seed + 1, backend), randn((j, l), seed + 2, backend)
    composed = mode_product(T, B @ C, n)
    assert_close(mode_product(mode_product(T, B, n), C, n), composed)
    assert_close(multi_mode_product(T, [B, C], [n, n]), composed)


@given(shape=shapes(max_order=4, max_elements=300), seed=seeds, data=st.data())
def test_vec_of_multi_mode_product_is_kron_transpose(shape, seed, data):
    out_sizes = data.draw(st.lists(sizes, min_size=len(shape), max_size=len(shape)))
    T = randn(shape, seed)
    Ms = [randn((i, j), seed + 1 + n) for n, (i, j) in enumerate(zip(shape, out_sizes))]
    lhs = multi_mode_product(T, Ms).reshape(-1)
    assert_close(lhs, kron(Ms).T @ T.reshape(-1))


matrix_shapes = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4)


@pytest.mark.parametrize("backend", BACKENDS)
@given(dims=matrix_shapes, seed=seeds)
def test_kron_matches_tensorly(backend, dims, seed):
    Ms = [randn(d, seed + i, backend) for i, d in enumerate(dims)]
    out = kron(Ms)
    assert tuple(out.shape) == (math.prod(r for r, _ in dims), math.prod(c for _, c in dims))
    assert_close(out, tl.tenalg.kronecker([to_numpy(M) for M in Ms]))


@pytest.mark.parametrize("backend", BACKENDS)
@given(dims=matrix_shapes, batch=st.lists(st.integers(1, 3), max_size=2), seed=seeds)
def test_kron_apply_equals_dense_kron(backend, dims, batch, seed):
    Ms = [randn(d, seed + i, backend) for i, d in enumerate(dims)]
    n_in = math.prod(c for _, c in dims)
    x = randn((n_in, *batch), seed + 99, backend)
    out = kron_apply(Ms, x)
    dense = to_numpy(kron(Ms)) @ to_numpy(x).reshape(n_in, -1)
    assert tuple(out.shape) == (math.prod(r for r, _ in dims), *batch)
    assert_close(out, dense.reshape(out.shape))


def test_kron_apply_keeps_autograd():
    Ms = [torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ms: kron_apply(list(ms), x), (x, *Ms))


def test_kron_apply_zero_sized_batch():
    Ms = [np.ones((2, 3)), np.ones((1, 2))]
    assert kron_apply(Ms, np.ones((6, 0))).shape == (2, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@given(rows=st.lists(st.integers(1, 5), min_size=1, max_size=4), r=st.integers(1, 4), seed=seeds)
def test_khatri_rao_matches_tensorly(backend, rows, r, seed):
    Ms = [randn((i, r), seed + n, backend) for n, i in enumerate(rows)]
    out = khatri_rao(Ms)
    assert tuple(out.shape) == (math.prod(rows), r)
    assert_close(out, tl.tenalg.khatri_rao([to_numpy(M) for M in Ms]))
    # column r is the Kronecker product of the columns
    for c in range(r):
        assert_close(out[:, c], kron([M[:, c : c + 1] for M in Ms])[:, 0])


def test_product_errors_name_the_problem():
    T = np.zeros((2, 3, 4))
    with pytest.raises(ShapeError, match=r"needs 3 rows; the paper's convention \(Eq. 3\)"):
        mode_product(T, np.zeros((5, 3)), 1)
    with pytest.raises(ShapeError, match=r"matrix must be 2-d"):
        mode_product(T, np.zeros(3), 1)
    with pytest.raises(BackendError, match=r"mix numpy arrays and torch tensors"):
        mode_product(T, torch.zeros(3, 3), 1)
    with pytest.raises(ShapeError, match=r"4 matrices given for an order-3 tensor"):
        multi_mode_product(T, [np.zeros((2, 2))] * 4)
    with pytest.raises(ShapeError, match=r"2 matrices but 1 modes"):
        multi_mode_product(T, [np.zeros((2, 2)), np.zeros((3, 3))], modes=[0])
    with pytest.raises(ShapeError, match=r"matrices\[1\] of shape \(2, 2\) does not fit mode 2"):
        multi_mode_product(T, [np.zeros((2, 2)), np.zeros((2, 2))], modes=[0, 2])
    with pytest.raises(ShapeError, match=r"a single array of shape \(2, 2\); wrap it in a list"):
        kron(np.zeros((2, 2)))
    with pytest.raises(ShapeError, match=r"matrices is empty"):
        kron([])
    with pytest.raises(ShapeError, match=r"matrices\[0\] must be a matrix \(2-d\)"):
        kron([np.zeros(3)])
    with pytest.raises(ShapeError, match=r"first dimension must be prod = 6"):
        kron_apply([np.zeros((2, 2)), np.zeros((3, 3))], np.zeros(5))
    with pytest.raises(ShapeError, match=r"equal column counts"):
        khatri_rao([np.zeros((2, 2)), np.zeros((2, 3))])


def test_mixed_devices_are_rejected():
    a = torch.zeros(2, 2)
    b = torch.zeros(2, 2, device="meta")
    with pytest.raises(BackendError, match=r"different devices"):
        kron([a, b])

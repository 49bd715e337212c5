"""Fuzzing the public ``tera.tn`` functions with malformed arguments.

Shapes are random (orders 0-4, sizes 0-4, so empty modes and 0-d arrays occur), modes and
``k`` range over negative and out-of-range values and sometimes are not ints at all,
matrices have random shapes that fit only sometimes, and numpy and torch inputs (of
mixed dtypes) are used. Every call must either raise a ``tera.errors`` exception or return
the right answer, checked against numpy (``reshape``, ``moveaxis``, ``tensordot``,
``np.kron``); any other exception fails the test.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tera.tn as tn
from tera.errors import TeraError
from tests.helpers import assert_close, to_numpy

FUZZ = settings(max_examples=60)

small_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
indices = st.one_of(
    st.integers(-6, 6),
    st.sampled_from([1.0, "1", None, True, np.int64(1), (1,)]),
)
backends = st.sampled_from(["numpy", "torch"])
dtypes = st.sampled_from(["float64", "float32"])


def _array(shape: tuple[int, ...], backend: str, seed: int = 0, dtype: str = "float64") -> Any:
    data = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return torch.from_numpy(data) if backend == "torch" else data


def _attempt(f, *args, **kwargs) -> tuple[Any, TeraError | None]:
    """Call f: (result, None), or (None, error) for our errors; anything else propagates."""
    try:
        return f(*args, **kwargs), None
    except TeraError as err:
        assert str(err), "an error without a message"
        return None, err


def _valid_index(value: Any, low: int, high: int) -> int | None:
    """The index as an int when it is an integer (not bool) in [low, high), else None."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value) if low <= int(value) < high else None


@FUZZ
@given(shape=small_shapes, k=indices, backend=backends)
def test_unfold(shape, k, backend):
    T = _array(shape, backend)
    out, err = _attempt(tn.unfold, T, k)
    kk = _valid_index(k, 0, len(shape) + 1)
    if kk is None:
        assert err is not None
        return
    assert err is None
    expected = to_numpy(T).reshape(math.prod(shape[:kk]), math.prod(shape[kk:]))
    assert_close(out, expected)


@FUZZ
@given(rows=st.integers(0, 6), cols=st.integers(0, 6), shape=small_shapes, k=indices)
def test_fold(rows, cols, shape, k):
    M = _array((rows, cols), "numpy")
    out, err = _attempt(tn.fold, M, shape, k)
    kk = _valid_index(k, 0, len(shape) + 1)
    fits = kk is not None and (rows, cols) == (math.prod(shape[:kk]), math.prod(shape[kk:]))
    if not fits:
        assert err is not None
        return
    assert err is None and out.shape == shape
    assert_close(tn.unfold(out, kk), M)


@FUZZ
@given(shape=small_shapes, n=indices, backend=backends)
def test_mode_unfold(shape, n, backend):
    T = _array(shape, backend)
    out, err = _attempt(tn.mode_unfold, T, n)
    nn_ = _valid_index(n, -len(shape), len(shape))
    if nn_ is None:
        assert err is not None
        return
    assert err is None
    others = math.prod(s for i, s in enumerate(shape) if i != nn_ % len(shape))
    expected = np.moveaxis(to_numpy(T), nn_, 0).reshape(shape[nn_], others)
    assert_close(out, expected)


@FUZZ
@given(rows=st.integers(0, 5), cols=st.integers(0, 8), shape=small_shapes, n=indices)
def test_mode_fold(rows, cols, shape, n):
    M = _array((rows, cols), "numpy")
    out, err = _attempt(tn.mode_fold, M, n, shape)
    nn_ = _valid_index(n, -len(shape), len(shape))
    fits = False
    if nn_ is not None:
        m = nn_ % len(shape)
        rest = math.prod(s for i, s in enumerate(shape) if i != m)
        fits = (rows, cols) == (shape[m], rest)
    if not fits:
        assert err is not None
        return
    assert err is None and out.shape == shape
    assert_close(tn.mode_unfold(out, nn_), M)


@FUZZ
@given(
    shape=small_shapes,
    mat=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    n=indices,
    backend=backends,
    dtype=dtypes,
)
def test_mode_product(shape, mat, n, backend, dtype):
    T = _array(shape, backend)
    M = _array(mat, backend, seed=1, dtype=dtype)
    out, err = _attempt(tn.mode_product, T, M, n)
    nn_ = _valid_index(n, -len(shape), len(shape))
    if nn_ is None or mat[0] != shape[nn_]:
        assert err is not None
        return
    assert err is None
    expected = np.moveaxis(np.tensordot(to_numpy(T), to_numpy(M), ([nn_], [0])), -1, nn_)
    assert_close(out, expected, rtol=1e-5 if dtype == "float32" else 1e-9)


@FUZZ
@given(
    shape=small_shapes,
    mats=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=0, max_size=4),
    modes=st.one_of(st.none(), st.lists(st.integers(-5, 5), max_size=4), st.just(0)),
    backend=backends,
)
def test_multi_mode_product(shape, mats, modes, backend):
    T = _array(shape, backend)
    Ms = [_array(m, backend, seed=i + 1) for i, m in enumerate(mats)]
    out, err = _attempt(tn.multi_mode_product, T, Ms, modes)
    if not Ms:
        assert err is None and out is T
        return
    order = len(shape)
    if modes is None:
        mode_list = list(range(len(Ms))) if len(Ms) <= order else None
    elif (
        isinstance(modes, list)
        and len(modes) == len(Ms)
        and all(-order <= m < order for m in modes)
    ):
        mode_list = [m % order for m in modes]
    else:
        mode_list = None
    expected = to_numpy(T)
    if mode_list is not None:
        for M, m in zip(Ms, mode_list):
            if M.shape[0] != expected.shape[m]:
                mode_list = None
                break
            expected = np.moveaxis(np.tensordot(expected, to_numpy(M), ([m], [0])), -1, m)
    if mode_list is None:
        assert err is not None
        return
    assert err is None
    assert_close(out, expected)


matrix_shapes = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=0, max_size=3)


@FUZZ
@given(shapes=matrix_shapes, backend=backends, single=st.booleans())
def test_kron(shapes, backend, single):
    Ms = [_array(s, backend, seed=i) for i, s in enumerate(shapes)]
    arg = Ms[0] if single and Ms else Ms
    out, err = _attempt(tn.kron, arg)
    if not Ms or (single and Ms):
        assert err is not None
        return
    assert err is None
    assert_close(out, functools.reduce(np.kron, [to_numpy(M) for M in Ms]))


@FUZZ
@given(
    shapes=matrix_shapes,
    x_shape=small_shapes,
    backend=backends,
    dtype=dtypes,
)
def test_kron_apply(shapes, x_shape, backend, dtype):
    Ms = [_array(s, backend, seed=i) for i, s in enumerate(shapes)]
    x = _array(x_shape, backend, seed=9, dtype=dtype)
    out, err = _attempt(tn.kron_apply, Ms, x)
    n_in = math.prod(s[1] for s in shapes)
    if not Ms or not x_shape or x_shape[0] != n_in:
        assert err is not None
        return
    assert err is None
    K = functools.reduce(np.kron, [to_numpy(M) for M in Ms])
    batch = x_shape[1:]
    expected = (K @ to_numpy(x).astype(np.float64).reshape(n_in, math.prod(batch))).reshape(
        K.shape[0], *batch
    )
    assert_close(out, expected, rtol=1e-5 if dtype == "float32" else 1e-9)


@FUZZ
@given(shapes=matrix_shapes, backend=backends)
def test_khatri_rao(shapes, backend):
    Ms = [_array(s, backend, seed=i) for i, s in enumerate(shapes)]
    out, err = _attempt(tn.khatri_rao, Ms)
    if not Ms or len({s[1] for s in shapes}) != 1:
        assert err is not None
        return
    assert err is None
    cols = shapes[0][1]
    expected = np.zeros((math.prod(s[0] for s in shapes), cols))
    for c in range(cols):
        expected[:, c] = functools.reduce(np.kron, [to_numpy(M)[:, c] for M in Ms])
    assert_close(out, expected)


@FUZZ
@given(
    core=small_shapes,
    factors=matrix_shapes,
    k=indices,
    backend=backends,
)
def test_tucker_to_tensor_and_matrix(core, factors, k, backend):
    G = _array(core, backend)
    Fs = [_array(s, backend, seed=i + 1) for i, s in enumerate(factors)]
    full, err_full = _attempt(tn.tucker_to_tensor, G, Fs)
    mat, err_mat = _attempt(tn.tucker_to_matrix, G, Fs, k)
    fits = len(factors) == len(core) >= 1 and all(f[0] == r for f, r in zip(factors, core))
    if not fits:
        assert err_full is not None and err_mat is not None
        return
    assert err_full is None
    expected = to_numpy(G)
    for m, F in enumerate(Fs):
        expected = np.moveaxis(np.tensordot(expected, to_numpy(F), ([m], [0])), -1, m)
    assert_close(full, expected)
    kk = _valid_index(k, 0, len(core) + 1)
    if kk is None:
        assert err_mat is not None
        return
    assert err_mat is None
    shape = expected.shape
    assert_close(mat, expected.reshape(math.prod(shape[:kk]), math.prod(shape[kk:])))


sizes = st.one_of(st.integers(-3, 300), st.sampled_from([16.0, "16", None, True, np.int64(16)]))


@FUZZ
@given(size=sizes, mode=sizes)
def test_split_dim_and_friends(size, mode):
    as_int = _valid_index(size, 1, 10**9)
    mode_int = _valid_index(mode, -(10**9), 10**9)
    modes, err = _attempt(tn.split_dim, size, mode)
    if as_int is None or mode_int is None or mode_int < 2:
        assert err is not None
    elif err is None:
        assert math.prod(modes) == as_int
        assert modes == (as_int,) or all(m == mode_int for m in modes)
    else:  # not a power of mode: the suggestion must itself be a valid split
        assert as_int % mode_int != 0 or any(
            m != mode_int for m in tn.suggest_modes(as_int, mode_int)
        )
    valid, err = _attempt(tn.valid_mode_sizes, size)
    if as_int is None:
        assert err is not None
    else:
        assert err is None and all(tn.split_dim(as_int, m) for m in valid if m >= 2)
    suggested, err = _attempt(tn.suggest_modes, size, mode)
    if as_int is None or mode_int is None:
        assert err is not None
    else:
        assert err is None and math.prod(suggested) == as_int


@FUZZ
@given(
    equation=st.sampled_from(["ij,jk->ik", "ij->ji", "ii->i", "ijk,k->ij", "ab,bc", "i->j"]),
    shapes=st.lists(small_shapes, min_size=0, max_size=3),
    backend=backends,
)
def test_contract(equation, shapes, backend):
    ops = [_array(s, backend, seed=i) for i, s in enumerate(shapes)]
    out, err = _attempt(tn.contract, equation, *ops)
    try:
        expected = np.einsum(equation, *[to_numpy(o) for o in ops])
    except ValueError:
        assert err is not None
        return
    if err is None:
        assert_close(out, expected)


def test_fuzz_found_cases_stay_fixed():
    """Cases the fuzzers found raising raw numpy/torch/Python errors, now ours or right."""
    mixed = tn.mode_product(torch.ones(2, 3), torch.ones(3, 2, dtype=torch.float64), 1)
    assert mixed.dtype == torch.float64 and torch.equal(mixed, torch.full((2, 2), 3.0).double())
    x = tn.kron_apply([torch.eye(2)], torch.ones(2, dtype=torch.float64))
    assert x.dtype == torch.float64
    assert tn.unfold(np.zeros((2, 3)), np.int64(1)).shape == (2, 3)
    for call in (
        lambda: tn.multi_mode_product(np.zeros((2, 2)), [np.eye(2)], modes=0),
        lambda: tn.fold(np.zeros((2, 3)), (2, 3.5), 1),
        lambda: tn.hosvd(np.ones((2, 2)), ranks=1.5),
        lambda: tn.valid_mode_sizes("8"),
        lambda: tn.plan("ij->ji", (-1, 2)),
    ):
        _, err = _attempt(call)
        assert err is not None

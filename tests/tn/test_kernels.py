"""tera.tn.kernels: the hand-ordered Tucker contraction order equals the generic algebra."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tera.adapters import tera_kernel
from tera.errors import ShapeError
from tera.tn import tucker_to_matrix
from tera.tn.kernels import (
    merge_small_modes,
    scaled_tucker_flops,
    scaled_tucker_matrix,
    scaled_tucker_push,
    scaled_tucker_push_flops,
)

F64 = torch.float64

# The adapters' lean-backward kernel computes the same matrix: both are held to these laws.
MATRIX_KERNELS = pytest.mark.parametrize(
    "matrix",
    [scaled_tucker_matrix, tera_kernel.lean_tucker_matrix],
    ids=["tn", "adapters-lean-backward"],
)


@st.composite
def networks(draw, max_order=5, max_size=5):
    order = draw(st.integers(1, max_order))
    modes = tuple(draw(st.integers(1, max_size)) for _ in range(order))
    ranks = tuple(draw(st.integers(1, i)) for i in modes)
    k = draw(st.integers(0, order))
    seed = draw(st.integers(0, 2**31 - 1))
    zero = draw(st.one_of(st.none(), st.integers(0, order - 1)))
    gen = torch.Generator().manual_seed(seed)
    core = torch.randn(*ranks, generator=gen, dtype=F64)
    factors = [torch.randn(r, i, generator=gen, dtype=F64) for r, i in zip(ranks, modes)]
    vectors = [torch.randn(r, generator=gen, dtype=F64) for r in ranks]
    if zero is not None:  # TeRA's init: one vector all zeros
        vectors[zero] = torch.zeros(ranks[zero], dtype=F64)
    return core, vectors, factors, k


def _reference(core, vectors, factors, k, scale=1.0):
    return tucker_to_matrix(core, [v[:, None] * a for v, a in zip(vectors, factors)], k) * scale


@MATRIX_KERNELS
@settings(max_examples=100, deadline=None)
@given(networks(), st.floats(0.1, 3.0))
def test_forward_equals_tucker_to_matrix(matrix, net, scale):
    core, vectors, factors, k = net
    out = matrix(core, vectors, factors, k, scale=scale)
    torch.testing.assert_close(out, _reference(core, vectors, factors, k, scale))


@MATRIX_KERNELS
@settings(max_examples=100, deadline=None)
@given(networks(), st.integers(0, 2**31 - 1))
def test_gradients_of_the_vectors_equal_autograd_of_the_reference(matrix, net, seed):
    core, vectors, factors, k = net
    vectors = [v.clone().requires_grad_(True) for v in vectors]
    out = matrix(core, vectors, factors, k, scale=0.5)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ours = torch.autograd.grad((out * weight).sum(), vectors)
    ref = torch.autograd.grad((_reference(core, vectors, factors, k, 0.5) * weight).sum(), vectors)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@MATRIX_KERNELS
@settings(max_examples=100, deadline=None)
@given(networks(), st.integers(0, 2**31 - 1), st.booleans())
def test_transposed_output_and_its_gradients(matrix, net, seed, contiguous_grad):
    """``transpose=True`` is the transpose; its backward takes either gradient layout."""
    core, vectors, factors, k = net
    vectors = [v.clone().requires_grad_(True) for v in vectors]
    out = matrix(core, vectors, factors, k, transpose=True)
    ref = _reference(core, vectors, factors, k)
    torch.testing.assert_close(out, ref.T)
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=F64)
    if not contiguous_grad:
        upstream = upstream.T.contiguous().T
    ours = torch.autograd.grad(out, vectors, upstream)
    theirs = torch.autograd.grad(ref.T, vectors, upstream)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


@MATRIX_KERNELS
def test_gradcheck_of_the_custom_backward(matrix):
    gen = torch.Generator().manual_seed(0)
    modes = (3, 2, 4)
    core = torch.randn(*modes, generator=gen, dtype=F64)
    factors = [torch.randn(i, i, generator=gen, dtype=F64) for i in modes]
    vectors = [torch.randn(i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    for transpose in (False, True):
        assert torch.autograd.gradcheck(
            lambda *v, t=transpose: matrix(core, list(v), factors, 2, transpose=t),
            vectors,
        )


@MATRIX_KERNELS
def test_trainable_core_and_factors_fall_back_to_plain_autograd(matrix):
    """Research use: gradients for G and A_n too (the lean backward only serves the d's)."""
    gen = torch.Generator().manual_seed(1)
    modes = (4, 2, 3)
    core = torch.randn(*modes, generator=gen, dtype=F64, requires_grad=True)
    factors = [torch.randn(i, i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    vectors = [torch.randn(i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    ours = torch.autograd.grad(
        matrix(core, vectors, factors, 1).square().sum(),
        [core, *factors, *vectors],
    )
    ref = torch.autograd.grad(
        _reference(core, vectors, factors, 1).square().sum(), [core, *factors, *vectors]
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@MATRIX_KERNELS
def test_numpy_inputs_give_numpy_output(matrix):
    rng = np.random.default_rng(0)
    core = rng.standard_normal((4, 2, 2))
    factors = [
        rng.standard_normal((4, 4)),
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 2)),
    ]
    vectors = [rng.standard_normal(4), rng.standard_normal(2), rng.standard_normal(2)]
    out = matrix(core, vectors, factors, 1)
    assert isinstance(out, np.ndarray)
    ref = tucker_to_matrix(core, [v[:, None] * a for v, a in zip(vectors, factors)], 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@MATRIX_KERNELS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_within_its_rounding(matrix, dtype):
    """float32/bf16 agree with float64 to a few units of their own rounding.

    Each entry is a sum of prod(R) products; relative to the result's norm the error is
    about eps * sqrt(order) for well-scaled data, so 8 * eps * ||M|| bounds it comfortably.
    """
    gen = torch.Generator().manual_seed(2)
    modes = (64, 4, 4, 4)
    core = torch.randn(*modes, generator=gen, dtype=F64)
    factors = [torch.randn(i, i, generator=gen, dtype=F64) / math.sqrt(i) for i in modes]
    vectors = [torch.rand(i, generator=gen, dtype=F64) for i in modes]
    ref = matrix(core, vectors, factors, 1)
    low = matrix(core.to(dtype), [v.to(dtype) for v in vectors], [a.to(dtype) for a in factors], 1)
    assert low.dtype == dtype
    eps = torch.finfo(dtype).eps
    err = (low.double() - ref).norm() / ref.norm()
    assert err < 8 * eps


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(1, 512))
def test_merge_small_modes_partitions_in_order_within_the_limit(sizes, limit):
    groups = merge_small_modes(sizes, limit)
    assert [n for g in groups for n in g] == list(range(len(sizes)))
    for g in groups:
        assert len(g) == 1 or math.prod(sizes[n] for n in g) <= limit
    for a, b in itertools.pairwise(groups):  # greedy from the right: a's last did not fit
        assert math.prod(sizes[n] for n in b) * sizes[a[-1]] > limit


def test_flops_of_the_paper_case_are_near_2_j_cubed():
    """(1024 | 4^5): one 1024-wide GEMM (2 J^3) plus two grouped Kronecker passes."""
    modes = (1024, 4, 4, 4, 4, 4)
    j = 1024
    fwd = scaled_tucker_flops(modes, modes)
    assert fwd == 2 * j**3 + 2 * j * j * 64 + 2 * j * j * 16
    assert scaled_tucker_flops(modes, modes, backward=True) == fwd + 7 * j * j


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((2, 3), [(2,), (3,)], [(2, 2)], 1), "one factor and one vector per mode"),
        (((2, 3), [(2,), (4,)], [(2, 2), (3, 3)], 1), "mode 1: core size 3"),
        (((2, 3), [(2,), (3,)], [(2, 2), (3, 3)], 3), "k=3 is out of range"),
    ],
)
@MATRIX_KERNELS
def test_bad_shapes_raise_shape_error(matrix, args, match):
    core, vecs, facs, k = args
    with pytest.raises(ShapeError, match=match):
        matrix(torch.zeros(core), [torch.zeros(v) for v in vecs], [torch.zeros(f) for f in facs], k)


@settings(max_examples=100, deadline=None)
@given(networks(), st.lists(st.integers(1, 4), min_size=0, max_size=2), st.integers(0, 2**31 - 1))
def test_push_equals_x_times_the_matrix_with_the_same_gradients(net, lead, seed):
    core, vectors, factors, k = net
    vectors = [v.clone().requires_grad_(True) for v in vectors]
    gen = torch.Generator().manual_seed(seed)
    n_in = math.prod(int(a.shape[1]) for a in factors[:k])
    x = torch.randn(*lead, n_in, generator=gen, dtype=F64, requires_grad=True)
    y = scaled_tucker_push(x, core, vectors, factors, k)
    ref = x @ _reference(core, vectors, factors, k)
    torch.testing.assert_close(y, ref)
    weight = torch.randn(y.shape, generator=gen, dtype=F64)
    ours = torch.autograd.grad((y * weight).sum(), [x, *vectors])
    theirs = torch.autograd.grad((ref * weight).sum(), [x, *vectors])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("ranks", "modes", "k"),
    [((8, 4, 4), (8, 4, 4), 1), ((64, 4, 4, 4), (64, 4, 4, 4), 1), ((4, 3, 5, 2), (6, 3, 5, 4), 2)],
)
def test_push_flop_formula_counts_the_matmuls(ranks, modes, k):
    from torch.utils.flop_counter import FlopCounterMode

    core = torch.randn(ranks)
    factors = [torch.randn(r, i) for r, i in zip(ranks, modes)]
    vectors = [torch.rand(r, requires_grad=True) for r in ranks]
    x = torch.randn(7, math.prod(modes[:k]), requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        y = scaled_tucker_push(x, core, vectors, factors, k)
    assert forward.get_total_flops() == scaled_tucker_push_flops(ranks, modes, k, rows=7)
    with FlopCounterMode(display=False) as backward:
        y.sum().backward()
    # input gradient through everything, weight gradients of the factors (for the d's)
    expected = scaled_tucker_push_flops(ranks, modes, k, rows=7, backward=True)
    assert backward.get_total_flops() == expected


def test_push_rejects_an_input_of_the_wrong_width():
    core, factors = torch.randn(2, 3), [torch.randn(2, 2), torch.randn(3, 3)]
    with pytest.raises(ShapeError, match=r"last dimension must be prod\(I\[:k\]\) = 2"):
        scaled_tucker_push(torch.randn(4, 3), core, [torch.ones(2), torch.ones(3)], factors, 1)

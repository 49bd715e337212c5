"""tera.adapters.tera_kernel: TeRA's evaluator, its lean backward, caches and TF32 policy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tera.adapters import policy, tera_kernel
from tera.adapters.tera_kernel import scaled_tucker_matrix
from tera.errors import ShapeError
from tera.tn import tucker_to_matrix

F64 = torch.float64


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


@settings(max_examples=100, deadline=None)
@given(networks(), st.floats(0.1, 3.0))
def test_forward_equals_tucker_to_matrix(net, scale):
    core, vectors, factors, k = net
    out = scaled_tucker_matrix(core, vectors, factors, k, scale=scale)
    torch.testing.assert_close(out, _reference(core, vectors, factors, k, scale))


@settings(max_examples=100, deadline=None)
@given(networks(), st.integers(0, 2**31 - 1))
def test_gradients_of_the_vectors_equal_autograd_of_the_reference(net, seed):
    core, vectors, factors, k = net
    vectors = [v.clone().requires_grad_(True) for v in vectors]
    out = scaled_tucker_matrix(core, vectors, factors, k, scale=0.5)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ours = torch.autograd.grad((out * weight).sum(), vectors)
    ref = torch.autograd.grad((_reference(core, vectors, factors, k, 0.5) * weight).sum(), vectors)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@settings(max_examples=100, deadline=None)
@given(networks(), st.integers(0, 2**31 - 1), st.booleans())
def test_transposed_output_and_its_gradients(net, seed, contiguous_grad):
    """``transpose=True`` is the transpose; its backward takes either gradient layout."""
    core, vectors, factors, k = net
    vectors = [v.clone().requires_grad_(True) for v in vectors]
    out = scaled_tucker_matrix(core, vectors, factors, k, transpose=True)
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


def test_gradcheck_of_the_custom_backward():
    gen = torch.Generator().manual_seed(0)
    modes = (3, 2, 4)
    core = torch.randn(*modes, generator=gen, dtype=F64)
    factors = [torch.randn(i, i, generator=gen, dtype=F64) for i in modes]
    vectors = [torch.randn(i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    for transpose in (False, True):
        assert torch.autograd.gradcheck(
            lambda *v, t=transpose: scaled_tucker_matrix(core, list(v), factors, 2, transpose=t),
            vectors,
        )


def test_trainable_core_and_factors_fall_back_to_plain_autograd():
    """Research use: gradients for G and A_n too (the lean backward only serves the d's)."""
    gen = torch.Generator().manual_seed(1)
    modes = (4, 2, 3)
    core = torch.randn(*modes, generator=gen, dtype=F64, requires_grad=True)
    factors = [torch.randn(i, i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    vectors = [torch.randn(i, generator=gen, dtype=F64, requires_grad=True) for i in modes]
    ours = torch.autograd.grad(
        scaled_tucker_matrix(core, vectors, factors, 1).square().sum(),
        [core, *factors, *vectors],
    )
    ref = torch.autograd.grad(
        _reference(core, vectors, factors, 1).square().sum(), [core, *factors, *vectors]
    )
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_numpy_inputs_give_numpy_output():
    rng = np.random.default_rng(0)
    core = rng.standard_normal((4, 2, 2))
    factors = [
        rng.standard_normal((4, 4)),
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 2)),
    ]
    vectors = [rng.standard_normal(4), rng.standard_normal(2), rng.standard_normal(2)]
    out = scaled_tucker_matrix(core, vectors, factors, 1)
    assert isinstance(out, np.ndarray)
    ref = tucker_to_matrix(core, [v[:, None] * a for v, a in zip(vectors, factors)], 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_within_its_rounding(dtype):
    """float32/bf16 agree with float64 to a few units of their own rounding.

    Each entry is a sum of prod(R) products; relative to the result's norm the error is
    about eps * sqrt(order) for well-scaled data, so 8 * eps * ||M|| bounds it comfortably.
    """
    gen = torch.Generator().manual_seed(2)
    modes = (64, 4, 4, 4)
    core = torch.randn(*modes, generator=gen, dtype=F64)
    factors = [torch.randn(i, i, generator=gen, dtype=F64) / math.sqrt(i) for i in modes]
    vectors = [torch.rand(i, generator=gen, dtype=F64) for i in modes]
    ref = scaled_tucker_matrix(core, vectors, factors, 1)
    low = scaled_tucker_matrix(
        core.to(dtype), [v.to(dtype) for v in vectors], [a.to(dtype) for a in factors], 1
    )
    assert low.dtype == dtype
    eps = torch.finfo(dtype).eps
    err = (low.double() - ref).norm() / ref.norm()
    assert err < 8 * eps


def test_the_backward_keeps_no_tensor_of_the_size_of_dw():
    """Saved for backward: the inputs only (core, vectors, factors), no N intermediates."""
    gen = torch.Generator().manual_seed(3)
    modes = (16, 4, 4, 4, 4)
    core = torch.randn(*modes, generator=gen)
    factors = [torch.randn(i, i, generator=gen) for i in modes]
    vectors = [torch.ones(i, requires_grad=True) for i in modes]
    inputs = {t.data_ptr() for t in [core, *factors, *vectors]}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = scaled_tucker_matrix(core, vectors, factors, 1)
    assert out.numel() == core.numel()
    assert saved and all(t.data_ptr() in inputs for t in saved)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (((2, 3), [(2,), (3,)], [(2, 2)], 1), "one factor and one vector per mode"),
        (((2, 3), [(2,), (4,)], [(2, 2), (3, 3)], 1), "mode 1: core size 3"),
        (((2, 3), [(2,), (3,)], [(2, 2), (3, 3)], 3), "k=3 is out of range"),
    ],
)
def test_bad_shapes_raise_shape_error(args, match):
    core, vecs, facs, k = args
    with pytest.raises(ShapeError, match=match):
        scaled_tucker_matrix(
            torch.zeros(core), [torch.zeros(v) for v in vecs], [torch.zeros(f) for f in facs], k
        )


def test_backward_runs_with_the_tf32_setting_of_its_forward(monkeypatch):
    seen = []

    def spy_on(name):
        real = getattr(tera_kernel, name)

        def spy(*args, **kwargs):
            seen.append(policy.cuda_tf32_enabled())
            return real(*args, **kwargs)

        monkeypatch.setattr(tera_kernel, name, spy)

    spy_on("apply_scaled_factors")  # the forward
    spy_on("apply_mode_groups")  # the backward
    before = policy.cuda_tf32_enabled()
    core, factors = torch.randn(3, 2, 2), [torch.randn(3, 3), torch.randn(2, 2), torch.randn(2, 2)]
    d = [torch.rand(r, requires_grad=True) for r in (3, 2, 2)]
    with policy.cuda_tf32(not before):
        m = scaled_tucker_matrix(core, d, factors, k=1)
    assert policy.cuda_tf32_enabled() == before  # restored after the block
    m.sum().backward()
    assert seen == [not before, not before]  # forward and backward alike
    assert policy.cuda_tf32_enabled() == before


def test_the_permuted_core_cache_follows_the_core():
    """The transposed output reads a cached permuted core: reused, never stale."""
    tera_kernel._DERIVED.clear()
    gen = torch.Generator().manual_seed(5)
    modes, k = (4, 3, 2), 1
    factors = [torch.randn(i, i, generator=gen, dtype=F64) for i in modes]
    vectors = [torch.rand(i, generator=gen, dtype=F64) + 0.5 for i in modes]

    def check(core):
        out = scaled_tucker_matrix(core, vectors, factors, k, transpose=True)
        assert out.is_contiguous()  # torch's out x in, computed in that layout
        torch.testing.assert_close(out, _reference(core, vectors, factors, k).T)

    core = torch.randn(*modes, generator=gen, dtype=F64)
    check(core)
    (entry,) = tera_kernel._DERIVED.values()
    check(core)
    assert list(tera_kernel._DERIVED.values()) == [entry]  # the second call reused it
    core.mul_(2.0)  # an in-place change bumps the version: recomputed, not stale
    check(core)
    del core, entry
    for seed in range(3):  # new cores of the same shape, possibly at the freed address
        check(torch.randn(*modes, generator=torch.Generator().manual_seed(seed), dtype=F64))
    assert len(tera_kernel._DERIVED) <= tera_kernel._DERIVED_MAX


def test_the_backward_reuses_the_kronecker_products_of_frozen_factors():
    tera_kernel._DERIVED.clear()
    gen = torch.Generator().manual_seed(6)
    modes = (16, 4, 4, 4)
    core = torch.randn(*modes, generator=gen, dtype=F64)
    factors = [torch.randn(i, i, generator=gen, dtype=F64) for i in modes]

    def grads():
        vectors = [torch.rand(i, generator=gen, dtype=F64).requires_grad_() for i in modes]
        out = scaled_tucker_matrix(core, vectors, factors, 1, transpose=True)
        weight = torch.randn(out.shape, generator=gen, dtype=F64)
        ours = torch.autograd.grad((out * weight).sum(), vectors)
        ref = _reference(core, vectors, factors, 1).T
        for a, b in zip(ours, torch.autograd.grad((ref * weight).sum(), vectors)):
            torch.testing.assert_close(a, b)

    grads()
    cached = {k: v[2] for k, v in tera_kernel._DERIVED.items() if k[0] == ("kron-T",)}
    assert len(cached) == 2  # modes (4, 4, 4, 16) in the gradient's order: [[4, 4], [4, 16]]
    grads()
    again = {k: v[2] for k, v in tera_kernel._DERIVED.items() if k[0] == ("kron-T",)}
    assert all(again[k] is cached[k] for k in cached)  # built once, reused
    factors[2].mul_(-1.0)  # a changed factor is rebuilt, never served stale
    grads()


def test_the_kernel_works_when_the_user_set_the_new_precision_api():
    """torch >= 2.9 raises on reading the legacy allow_tf32 once fp32_precision was set.

    Found on a GPU: after torch.compile set the new API, every TeRA forward raised.
    """
    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"  # the API PyTorch recommends
        core, factors = torch.randn(3, 2), [torch.randn(3, 3), torch.randn(2, 2)]
        d = [torch.rand(3, requires_grad=True), torch.rand(2, requires_grad=True)]
        with policy.cuda_tf32(True):
            assert matmul.fp32_precision == "tf32"
            m = scaled_tucker_matrix(core, d, factors, k=1, transpose=True)
        assert matmul.fp32_precision == "ieee"
        m.sum().backward()
        assert all(v.grad is not None for v in d)
    finally:
        matmul.fp32_precision = old

"""tera.adapters.tera_kernel: TeRA's evaluator, its lean backward, caches and TF32 policy."""

import torch

from tera.adapters import policy, tera_kernel
from tera.adapters.tera_kernel import lean_tucker_matrix
from tests.tn.test_kernels import _reference

F64 = torch.float64


# The laws the lean kernel shares with tera.tn.kernels.scaled_tucker_matrix (forward,
# gradients, transpose, gradcheck, plain-autograd fallback, numpy, low precision, shape
# errors) are tested
# for both in tests/tn/test_kernels.py (MATRIX_KERNELS); this file tests what is its own.


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
        out = lean_tucker_matrix(core, vectors, factors, 1)
    assert out.numel() == core.numel()
    assert saved and all(t.data_ptr() in inputs for t in saved)


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
        m = lean_tucker_matrix(core, d, factors, k=1)
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
        out = lean_tucker_matrix(core, vectors, factors, k, transpose=True)
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
        out = lean_tucker_matrix(core, vectors, factors, 1, transpose=True)
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
            m = lean_tucker_matrix(core, d, factors, k=1, transpose=True)
        assert matmul.fp32_precision == "ieee"
        m.sum().backward()
        assert all(v.grad is not None for v in d)
    finally:
        matmul.fp32_precision = old


def test_materialized_training_under_bf16_autocast_keeps_float32_and_its_gradients():
    """TRL and Trainer(bf16=True) run the forward under autocast: dW stays float32 (the
    engine's policy) and the d's get the float32 model's gradients up to bf16 rounding of
    the activations (relative 2e-2: bf16 has 8 bits of mantissa, the layer sums 64 terms)."""
    from torch import nn

    from tera.adapters import TeRAConfig, adapt

    def grads(autocast: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = adapt(
            nn.Sequential(nn.Linear(64, 64)),
            TeRAConfig(in_mode=8, out_mode=4, target_modules=["0"]),
        )
        model.set_engine_path("materialize")
        x = torch.randn(16, 64)
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            y = model(x)
        y.float().square().sum().backward()
        return [p.grad.clone() for _, p in model.adapter_parameters()]

    for got, want in zip(grads(True), grads(False), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))

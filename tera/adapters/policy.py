"""The execution policy: how an adapted layer runs its adapter on its base's device and dtype.

Everything that depends on the device or on process-wide precision state lives here, in
one place: whether a materialized ``dW`` is fused into the base weight, the dtype of an
unfused adapter matmul, whether ``dW`` is built with TF32 tensor cores (and the switch that
sets CUDA's float32 matmul precision), and the relative FLOP rates the engine weighs its
two paths with. :mod:`tera.tn` holds no such state.

Examples
--------
>>> import torch
>>> from tera.adapters.policy import execution_policy
>>> execution_policy(torch.zeros(2)).fuse   # a float32 base: dW is added to W0
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch

__all__ = [
    "FLOAT32_COST",
    "HALF_DTYPES",
    "TF32_COST",
    "ExecutionPolicy",
    "cuda_tf32",
    "cuda_tf32_enabled",
    "execution_policy",
]

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLOAT32_COST = 14.0
"""How much one float32 FLOP costs on a GPU, in half-precision FLOPs.

Measured on an H100, which ran a bf16 ``Linear(4096, 4096)`` training step 14.4x faster than
the float32 one (docs/performance.md)."""
TF32_COST = 2.0
"""How much one TF32 FLOP costs on a GPU, in half-precision FLOPs (half the rate, per spec)."""


@dataclass(frozen=True)
class ExecutionPolicy:
    """How an adapted layer evaluates its adapter, decided by its base weight.

    Attributes
    ----------
    fuse : bool
        Whether a materialized ``dW`` may be added to ``W0`` for one matmul (the sum is
        formed in float32 and rounded once: exactly the weight that
        :meth:`~tera.adapters.AdapterLinear.merge` writes). Also needs a plain linear
        layer and no active dropout.
    apply_dtype : torch.dtype or None
        The dtype of an unfused adapter matmul with the activations (``None``: the
        adapter's own, float32 or float64).
    tf32_build : bool
        Build ``dW`` with TF32 tensor cores (float32 range, 10-bit mantissa; the result is
        rounded to the base's 8- or 10-bit half precision anyway).
    build_rate : float
        Cost of one FLOP of building ``dW``, in units of the base layer's matmul FLOPs
        (see :func:`~tera.adapters.engine.path_costs`).
    push_rate : float
        Cost of one FLOP of the push path, in the same units.
    """

    fuse: bool
    apply_dtype: torch.dtype | None
    tf32_build: bool = False
    build_rate: float = 1.0
    push_rate: float = 1.0


def execution_policy(base_weight: torch.Tensor) -> ExecutionPolicy:
    """The :class:`ExecutionPolicy` for a base weight's dtype and device.

    The adapter's own numbers (trainable tensors, shared factors, ``dW``) stay at least
    float32 whatever the base's dtype. Then:

    * float32/float64 base: fused, everything in the adapter's dtype;
    * half-precision base (bfloat16/float16) on a CPU: unfused, the adapter's matmul in
      float32 (most CPUs emulate half GEMMs: 4.5x slower than float32 on an AVX2 EPYC);
    * half-precision base on an accelerator: fused in the base dtype (one half GEMM, 10-15x
      faster than float32 there), ``dW`` built in TF32 on CUDA; the push path still runs in
      float32 and is priced so (:data:`~tera.adapters.policy.FLOAT32_COST`).

    Examples
    --------
    >>> import torch
    >>> from tera.adapters.layer import execution_policy
    >>> policy = execution_policy(torch.zeros(2, dtype=torch.bfloat16))   # on a CPU
    >>> policy.fuse, policy.apply_dtype
    (False, torch.float32)
    """
    dtype = base_weight.dtype
    if dtype not in HALF_DTYPES:
        return ExecutionPolicy(fuse=True, apply_dtype=None)
    if base_weight.device.type == "cpu":
        return ExecutionPolicy(fuse=False, apply_dtype=torch.float32)
    tf32 = base_weight.device.type == "cuda"
    return ExecutionPolicy(
        fuse=True,
        apply_dtype=dtype,
        tf32_build=tf32,
        build_rate=TF32_COST if tf32 else FLOAT32_COST,
        push_rate=FLOAT32_COST,
    )


# -- CUDA's float32 matmul precision (process-wide state) ------------------------------------


def precision() -> str | bool:
    """The fp32 matmul precision of CUDA, read through the API this torch has.

    torch >= 2.9 has ``torch.backends.cuda.matmul.fp32_precision`` ("none", "ieee" or
    "tf32"); once it has been set, reading the legacy ``allow_tf32`` raises, so the new API
    is used whenever it exists (it reflects legacy settings too).

    Examples
    --------
    >>> from tera.adapters.policy import precision
    >>> precision() in ("none", "ieee", "tf32", True, False)
    True
    """
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return cast(str, matmul.fp32_precision)
    return bool(matmul.allow_tf32)  # pragma: no cover - torch < 2.9


def _set_precision(state: str | bool) -> None:
    matmul = torch.backends.cuda.matmul
    if isinstance(state, str):
        matmul.fp32_precision = state
    else:  # pragma: no cover - torch < 2.9
        matmul.allow_tf32 = state


def cuda_tf32_enabled() -> bool:
    """Whether float32 CUDA matmuls may use TF32 tensor cores right now.

    Examples
    --------
    >>> from tera.adapters.policy import cuda_tf32, cuda_tf32_enabled
    >>> with cuda_tf32(True):
    ...     cuda_tf32_enabled()
    True
    """
    state = precision()
    return state == "tf32" if isinstance(state, str) else state


@contextlib.contextmanager
def precision_set_to(state: str | bool) -> Iterator[None]:
    """Run the block with CUDA's fp32 matmul precision set to ``state`` (a :func:`precision`).

    Examples
    --------
    >>> from tera.adapters.policy import precision, precision_set_to
    >>> before = precision()
    >>> with precision_set_to(before):
    ...     precision() == before
    True
    """
    old = precision()
    if old == state:
        yield
        return
    _set_precision(state)
    try:
        yield
    finally:
        _set_precision(old)


@contextlib.contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """Allow (or forbid) TF32 tensor cores for float32 CUDA matmuls inside the block.

    Sets the process-wide fp32 matmul precision of CUDA (``fp32_precision``, or the legacy
    ``allow_tf32`` on torch < 2.9) and restores it on exit. TF32 keeps float32's range with
    a 10-bit mantissa, enough for a ``dW`` that is rounded to bfloat16 (8 bits) or float16
    (10 bits) before use; the backward of TeRA's kernel
    (:func:`tera.adapters.tera_kernel.lean_tucker_matrix`) runs with the setting that was
    in force at its forward.

    Examples
    --------
    >>> from tera.adapters.policy import cuda_tf32, cuda_tf32_enabled
    >>> before = cuda_tf32_enabled()
    >>> with cuda_tf32(True):
    ...     cuda_tf32_enabled()
    True
    >>> cuda_tf32_enabled() == before
    True
    """
    new_api = isinstance(precision(), str)
    target: str | bool = ("tf32" if enabled else "ieee") if new_api else enabled
    with precision_set_to(target):
        yield

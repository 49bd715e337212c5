"""Half-precision base layers: the precision in which TeRA builds ``dW`` and applies it.

One frozen half-precision (bf16 by default) ``Linear(J, J)`` with TeRA, ``tokens x J`` half
input, forward + backward to the d's, for each policy:

* ``dW fp32, apply fp32``: ``dW`` built in float32 and the adapter's matmul in float32 (the
  input upcast): the CPU policy, and what every half base did before.
* ``dW fp32, apply half``: ``dW`` built in float32, rounded once, matmul in the base dtype
  (float32 accumulation inside the GEMM): the accelerator policy.
* ``dW tf32, apply half`` (CUDA only): as above with TF32 tensor cores for the float32 build.
* ``dW half, apply half``: the Tucker kernel itself in the base dtype.
* ``fused half``: ``W0 + dW`` summed in float32, rounded once to the base dtype (exactly the
  weight :meth:`~tera.adapters.layer.AdapterLinear.merge` writes) and one matmul; an entry of
  ``dW`` under half an ulp of ``W0``'s entry vanishes from the forward, but so it does from
  the merged model.
* ``fused half, dW tf32`` (CUDA only): both.
* ``layer (shipped)``: ``AdapterLinear`` as it ships (:func:`tera.adapters.layer.execution_policy`).

Error columns, against a float64 evaluation of the same layer on the same input:
``out err`` is ``||y - y64|| / ||x dW^T||`` (relative to the adapter's contribution, not to
the output, so that a policy dropping the adapter shows 1.0), ``grad err`` the relative
error of all the d gradients together. The d's are drawn around one, where ``dW`` is about
as large as ``W0`` (TeRA's default scale); ``out err, small dW`` scales the zero-initialized
d (so ``dW``) by 1e-2, as early in training. The base layer's own half-precision rounding, in the
same unit, is the ``base`` row's ``out err``: a policy is as good as it can be when it is
at that level.

Run: ``.venv/bin/python benchmarks/half_policy.py [--device cuda] [--dtype bfloat16]
[--size 4096] [--tokens 2048,8192] [--reps 5] [--out FILE]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import DTYPES, alternate, emit, machine, markdown_table

from tera.adapters import TeRAConfig, adapt
from tera.adapters.engine import delta_weight
from tera.adapters.layer import AdapterLinear
from tera.adapters.policy import cuda_tf32
from tera.tn import suggest_modes

Forward = Callable[[AdapterLinear, torch.Tensor], torch.Tensor]


def _unfused(build: torch.dtype, apply: torch.dtype) -> Forward:
    def forward(layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
        w0 = layer.base_weight()
        net = layer.adapter.network(w0)
        dw = delta_weight(net, None if build == torch.float32 else build)
        return F.linear(x, w0) + F.linear(x.to(apply), dw.to(apply)).to(x.dtype)

    return forward


def _fused(layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
    w0 = layer.base_weight()
    dw = delta_weight(layer.adapter.network(w0))
    return F.linear(x, (w0.to(dw.dtype) + dw).to(w0.dtype))  # rounded once, as merge() does


def _shipped(layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = layer(x)
    return out


def policies(dtype: torch.dtype, device: str) -> dict[str, tuple[Forward, bool]]:
    """``name -> (forward, use TF32)`` for every policy compared."""
    half = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    table: dict[str, tuple[Forward, bool]] = {
        "dW fp32, apply fp32": (_unfused(torch.float32, torch.float32), False),
        f"dW fp32, apply {half}": (_unfused(torch.float32, dtype), False),
    }
    if device.startswith("cuda"):
        table[f"dW tf32, apply {half}"] = (_unfused(torch.float32, dtype), True)
    table[f"dW {half}, apply {half}"] = (_unfused(dtype, dtype), False)
    table[f"fused {half}"] = (_fused, False)
    if device.startswith("cuda"):
        table[f"fused {half}, dW tf32"] = (_fused, True)
    table["layer (shipped)"] = (_shipped, False)
    return table


def tera_layer(j: int, modes: str, device: str, dtype: torch.dtype) -> AdapterLinear:
    """A half-precision ``Linear(j, j)`` with TeRA (d's drawn around 1, as after training)."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(j, j, bias=False)).to(device, dtype)
    base.requires_grad_(False)
    if modes == "square":
        low = 1 << (j.bit_length() - 1) // 2
        side = (low, j // low)
        config = TeRAConfig(in_modes=side, out_modes=side, target_modules=["0"])
    else:
        config = TeRAConfig(in_mode=j, out_modes=suggest_modes(j, 4), target_modules=["0"])
    model = adapt(base, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.rand_like(p) + 0.5)
    layer = model.adapter_layers["0"]
    assert isinstance(layer, AdapterLinear)
    return layer


def reference(layer: AdapterLinear, x: torch.Tensor, gy: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 output, adapter contribution and d gradients."""
    params = list(layer.adapter.parameters())
    w0 = layer.base_weight().double()
    dw = delta_weight(layer.adapter.network(layer.base_weight()), torch.float64)
    x64 = x.double()
    contribution = F.linear(x64, dw)
    y = F.linear(x64, w0) + contribution
    grads = torch.autograd.grad(y, params, gy.double())
    return {
        "y": y.detach(),
        "base": F.linear(x64, w0),
        "adapter": contribution.detach(),
        "grads": torch.cat([g.flatten() for g in grads]),
    }


def errors(
    layer: AdapterLinear,
    forward: Forward,
    use_tf32: bool,
    x: torch.Tensor,
    gy: torch.Tensor,
    ref: dict[str, torch.Tensor],
) -> tuple[float, float]:
    """``(out err, grad err)`` of one policy (see the module docstring)."""
    params = list(layer.adapter.parameters())
    with cuda_tf32(use_tf32):
        y = forward(layer, x)
        grads = torch.autograd.grad(y, params, gy)
    g = torch.cat([t.flatten() for t in grads]).double()
    out_err = float((y.detach().double() - ref["y"]).norm() / ref["adapter"].norm())
    grad_err = float((g - ref["grads"]).norm() / ref["grads"].norm())
    return out_err, grad_err


def accuracy(
    layer: AdapterLinear, table: dict[str, tuple[Forward, bool]], x: torch.Tensor, gy: torch.Tensor
) -> dict[str, list[str]]:
    """``name -> [out err, grad err, out err with small dW]`` (the base row included)."""
    result: dict[str, list[str]] = {}
    d_zero = layer.adapter.d[layer.adapter.zero_index]
    for factor in (1.0, 1e-2):
        with torch.no_grad():
            d_zero.mul_(factor)
        ref = reference(layer, x, gy)
        base = F.linear(x, layer.base_weight()).double()
        base_err = float((base - ref["base"]).norm() / ref["adapter"].norm())
        result.setdefault("base", []).extend(
            [f"{base_err:.1e}", "-"] if factor == 1.0 else [f"{base_err:.1e}"]
        )
        for name, (forward, use_tf32) in table.items():
            out_err, grad_err = errors(layer, forward, use_tf32, x, gy, ref)
            cells = [f"{out_err:.1e}", f"{grad_err:.1e}"] if factor == 1.0 else [f"{out_err:.1e}"]
            result.setdefault(name, []).extend(cells)
        with torch.no_grad():
            d_zero.div_(factor)
    return result


def run(
    j: int, tokens: int, modes: str, device: str, dtype: torch.dtype, reps: int
) -> list[list[str]]:
    """Rows of the table for one layer shape and token count."""
    layer = tera_layer(j, modes, device, dtype)
    torch.manual_seed(1)
    x = torch.randn(tokens, j, device=device, dtype=dtype, requires_grad=True)
    gy = torch.randn(tokens, j, device=device, dtype=dtype)
    params = list(layer.adapter.parameters())

    def step(forward: Forward, use_tf32: bool) -> Callable[[], None]:
        def go() -> None:
            x.grad = None
            for p in params:
                p.grad = None
            with cuda_tf32(use_tf32):
                forward(layer, x).backward(gy)

        return go

    def base_step() -> None:
        x.grad = None
        F.linear(x, layer.base_weight()).backward(gy)

    table = policies(dtype, device)
    steps = {"base": base_step} | {name: step(f, t) for name, (f, t) in table.items()}
    inner = 10 if device.startswith("cuda") else 1
    timing = alternate(steps, "base", reps, device=device, inner=inner)
    errs = accuracy(layer, table, x.detach()[:256], gy[:256])
    modes_in, modes_out = (
        layer.adapter.modes[: layer.adapter.k],
        layer.adapter.modes[layer.adapter.k :],
    )
    label = f"({','.join(map(str, modes_in))} | {','.join(map(str, modes_out))})"
    return [
        [label, str(tokens), name, f"{t.median_ms:.2f}", t.ratio_text(), *errs[name]]
        for name, t in timing.items()
    ]


def main(argv: list[str] | None = None) -> str:
    """Command line entry point; returns the Markdown it prints."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tokens", default="2048")
    parser.add_argument("--modes", default="small,square", help="small: (J | 4,4,..); square")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    rows = []
    for modes in args.modes.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            rows += run(args.size, tokens, modes, args.device, dtype, args.reps)
            print(f"{modes} tokens={tokens} done", file=sys.stderr, flush=True)
    header = [
        "TeRA modes",
        "tokens",
        "policy",
        "ms",
        "x base (min..max)",
        "out err",
        "grad err",
        "out err, small dW",
    ]
    text = (
        f"Machine: {machine(args.device)}\n\n{args.dtype} Linear({args.size}, {args.size}) "
        f"on {args.device}, forward + backward.\n\n{markdown_table(header, rows)}\n"
    )
    emit(text, args.out)
    return text


if __name__ == "__main__":
    main()

"""One adapted Linear layer (J x J), forward + backward: every adapter side by side.

Variants, all on the same frozen ``nn.Linear(J, J)`` and the same input ``x`` (``tokens x J``,
requiring grad as inside a network): the frozen base layer; our LoRA r=32, VeRA r=256,
HiRA r=32, TeRA (J | 4, 4, ..) and TeRA fully tensorized (e.g. (32, 32 | 32, 32)); HF PEFT's
LoRA, VeRA and HiRA. Times are medians of alternating repetitions; ratios are to the base
layer measured in the same repetition. "FLOPs" is the engine's own estimate of the chosen
path over the base layer's ``4 * tokens * J^2`` (the floor the measured ratio aims at).

Memory (``--memory``): for one (J, tokens), each variant runs in a subprocess with glibc
returning large blocks to the OS (``MALLOC_MMAP_THRESHOLD_``), so the peak resident set
(``VmHWM``, reset before the step) tracks live tensors; reported in units of ``J^2`` floats
over the base layer's peak, next to the bytes saved for backward (exact, from autograd's
saved-tensor hooks) that stay alive per layer until its backward runs.

On a GPU (``--device cuda``, e.g. with ``--dtype bfloat16`` for a bf16 base layer and
input) every sample is ten back-to-back steps between synchronizations, and memory is the
peak of the CUDA caching allocator (``max_memory_allocated``) in this process.

Run: ``.venv/bin/python benchmarks/layer_step.py [--sizes 1024,2048] [--tokens 512,2048,8192]
[--reps 5] [--memory] [--device cpu] [--dtype float32] [--out benchmarks/results/layer_step.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import DTYPES, alternate, emit, machine, markdown_table

from tera.adapters import (
    AdapterConfig,
    HiRAConfig,
    LoRAConfig,
    TeRAConfig,
    VeRAConfig,
    adapt,
    trace_paths,
)
from tera.adapters.engine import path_costs
from tera.tn import suggest_modes


def _square_modes(j: int) -> tuple[int, ...]:
    """(32, 32) for 1024, (32, 64) for 2048: two modes as equal as powers of two allow."""
    low = 1 << (j.bit_length() - 1) // 2
    return (low, j // low)


def our_configs(j: int) -> dict[str, AdapterConfig]:
    """The adapters of ours compared on a J x J layer."""
    small = suggest_modes(j, 4)  # (4, 4, 4, 4, 4) for 1024, (4, 4, 4, 4, 4, 2) for 2048
    square = _square_modes(j)
    return {
        "LoRA r=32": LoRAConfig(r=32, alpha=64, target_modules=["0"]),
        "VeRA r=256": VeRAConfig(r=256, target_modules=["0"]),
        "HiRA r=32": HiRAConfig(r=32, target_modules=["0"]),
        f"TeRA ({j} | {','.join(map(str, small))})": TeRAConfig(
            in_mode=j, out_modes=small, target_modules=["0"]
        ),
        f"TeRA ({','.join(map(str, square))} | {','.join(map(str, square))})": TeRAConfig(
            in_modes=square, out_modes=square, target_modules=["0"]
        ),
    }


def peft_configs() -> dict[str, object]:
    """HF PEFT's LoRA, VeRA and HiRA with the same ranks."""
    from peft import HiraConfig, LoraConfig, VeraConfig

    return {
        "PEFT LoRA r=32": LoraConfig(r=32, lora_alpha=64, target_modules=["0"]),
        "PEFT VeRA r=256": VeraConfig(r=256, target_modules=["0"]),
        "PEFT HiRA r=32": HiraConfig(r=32, target_modules=["0"]),
    }


def base_model(j: int, device: str = "cpu", dtype: str = "float32") -> nn.Module:
    """The frozen layer every variant adapts (same weights for all)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(j, j, bias=False)).to(device, DTYPES[dtype])
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build(name: str, j: int, device: str = "cpu", dtype: str = "float32") -> nn.Module:
    """The variant ``name`` on a fresh base layer (adapter tensors stay float32)."""
    if name == "base":
        return base_model(j, device, dtype)
    ours = our_configs(j)
    if name in ours:
        model = adapt(base_model(j, device, dtype), ours[name])
        with torch.no_grad():  # away from the zero init: no shortcut may apply
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.rand_like(p) + 0.5)
        return model
    from peft import get_peft_model

    return get_peft_model(base_model(j, device, dtype), peft_configs()[name])  # type: ignore[arg-type]


def variant_names(j: int) -> list[str]:
    """All variants for size ``j``, the base first."""
    return ["base", *our_configs(j), *peft_configs()]


def stepper(model: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """One training step's compute: forward, backward (grads reset first)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        model(x).backward(gy)

    return step


def chosen_path(model: nn.Module, step: Callable[[], None]) -> str:
    """The path our adapted layer takes in one more (untimed) step; "" for PEFT and base."""
    layers = getattr(model, "adapter_layers", None)
    if not layers:
        return ""
    with trace_paths() as trace:
        step()
    return trace[layers["0"]]


def flop_ratio(model: nn.Module, tokens: int, j: int, path: str) -> str:
    """The engine's FLOP estimate of its chosen path over the base layer (ours only)."""
    layers = getattr(model, "adapter_layers", None)
    if not layers:
        return "1.00" if not any(p.requires_grad for p in model.parameters()) else "-"
    layer = layers["0"]
    net = layer.adapter.network(layer.base_weight())
    extra = path_costs(net, tokens, fused=True, backward=True)[path]
    return f"{1 + extra / (4 * tokens * j * j):.2f}"


def speed(
    sizes: list[int],
    tokens_list: list[int],
    reps: int,
    only: str = "",
    device: str = "cpu",
    dtype: str = "float32",
) -> str:
    """The speed table (Markdown); ``only`` keeps variants whose name contains a listed word."""
    rows = []
    for j in sizes:
        for tokens in tokens_list:
            torch.manual_seed(1)
            x = torch.randn(tokens, j, device=device, dtype=DTYPES[dtype], requires_grad=True)
            gy = torch.randn(tokens, j, device=device, dtype=DTYPES[dtype])
            wanted = [w for w in only.split(",") if w]
            names = [
                n
                for n in variant_names(j)
                if n == "base" or not wanted or any(w in n for w in wanted)
            ]
            models = {name: build(name, j, device, dtype) for name in names}
            steps = {name: stepper(m, x, gy) for name, m in models.items()}
            inner = 10 if device.startswith("cuda") else 1
            result = alternate(steps, "base", reps, device=device, inner=inner)
            for name, t in result.items():
                path = chosen_path(models[name], steps[name])
                rows.append(
                    [
                        str(j),
                        str(tokens),
                        name,
                        f"{t.median_ms:.1f}",
                        t.ratio_text(),
                        flop_ratio(models[name], tokens, j, path),
                        path,
                    ]
                )
            print(f"J={j} tokens={tokens} done", file=sys.stderr, flush=True)
            del models, steps
    header = ["J", "tokens", "variant", "ms", "x base (min..max)", "FLOPs x base", "path"]
    return markdown_table(header, rows)


# ------------------------------------------------------------------------------ memory


def _rss() -> dict[str, int]:
    with open("/proc/self/status") as f:
        status = f.read()
    return {
        key: 1024 * int(re.search(key + r":\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        for key in ("VmRSS", "VmHWM")
    }


def memory_worker(
    name: str, j: int, tokens: int, device: str = "cpu", dtype: str = "float32"
) -> dict[str, float]:
    """Peak memory growth of one step, and bytes saved for backward.

    On the CPU, run it in a fresh process (peak RSS); on a GPU the CUDA allocator's own
    peak counter is exact in any process.
    """
    model = build(name, j, device, dtype)
    torch.manual_seed(1)
    x = torch.randn(tokens, j, device=device, dtype=DTYPES[dtype], requires_grad=True)
    gy = torch.randn(tokens, j, device=device, dtype=DTYPES[dtype])
    step = stepper(model, x, gy)
    step()  # one-time allocations (plans, caches, grad buffers) before measuring
    existing = {t.data_ptr() for t in [*model.parameters(), *model.buffers(), x]}
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in existing:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    x.grad = None
    for p in model.parameters():
        p.grad = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del model, x, gy, step
        torch.cuda.empty_cache()
        return {"peak_bytes": float(peak), "saved_bytes": float(sum(saved))}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss()["VmRSS"]
    step()
    peak = _rss()["VmHWM"] - before
    return {"peak_bytes": float(peak), "saved_bytes": float(sum(saved))}


def memory(j: int, tokens: int, device: str = "cpu", dtype: str = "float32") -> str:
    """The memory table (Markdown), one subprocess per variant on the CPU."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results = {}
    for name in variant_names(j):
        if device.startswith("cuda"):
            results[name] = memory_worker(name, j, tokens, device, dtype)
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--memory-worker", name, str(j), str(tokens), dtype],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    unit = 4 * j * j  # float32 J x J, whatever the base dtype
    base = results["base"]["peak_bytes"]
    rows = [
        [
            name,
            f"{(r['peak_bytes'] - base) / unit:.2f}",
            f"{r['saved_bytes'] / unit:.2f}",
        ]
        for name, r in results.items()
    ]
    header = [
        "variant",
        f"peak extra over base (J^2 floats, J={j}, {tokens} tokens, {dtype} base on {device})",
        "saved for backward (J^2 floats)",
    ]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--tokens", default="512,2048,8192")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="", help="e.g. 'TeRA,HiRA': those variants only")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--memory-size", default="1024,2048", help="J,tokens of the memory run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.memory_worker:
        name, j, tokens, dtype = args.memory_worker
        print(json.dumps(memory_worker(name, int(j), int(tokens), "cpu", dtype)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    tokens = [int(s) for s in args.tokens.split(",")]
    dev, dtype = args.device, args.dtype
    parts = [
        f"Machine: {machine(dev)}",
        "",
        f"Base layer and input: {dtype} on {dev}; adapter tensors float32.",
        "",
        speed(sizes, tokens, args.reps, args.only, dev, dtype),
    ]
    if args.memory:
        mj, mt = (int(s) for s in args.memory_size.split(","))
        parts += ["", memory(mj, mt, dev, dtype)]
    text = "\n".join(parts) + "\n"
    emit(text, args.out)


if __name__ == "__main__":
    main()

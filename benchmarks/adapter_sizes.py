"""Trainable counts, "Params (%)" and saved adapter sizes on a Llama-2-7B-shaped model.

Counts come from ``parameter_report`` on a ``meta``-device LlamaForCausalLM (no weights).
File sizes come from really saving each adapter on the 64 q/v projections (4096 x 4096):
the base layers are allocated but never initialized (``to_empty``), so this needs ~4.3 GB
of RAM and no download.

Run: ``.venv/bin/python benchmarks/adapter_sizes.py [--out benchmarks/results/adapter_sizes.md]``
(the docs read that file; its sizes do not depend on the machine, the seconds do and are only
printed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from tera.adapters import HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig, adapt, parameter_report
from tera.cli import BUNDLED_CONFIGS

LLAMA2_7B = LlamaConfig(
    **{k: v for k, v in BUNDLED_CONFIGS["llama-2-7b"].items() if k != "model_type"}
)

CONFIGS = {
    "TeRA (4096 | 8,8,8,8)": TeRAConfig(in_mode=4096, out_mode=8),
    "VeRA r=256": VeRAConfig(r=256),
    "HiRA r=32": HiRAConfig(r=32),
    "HiRA r=1": HiRAConfig(r=1),
    "LoRA r=32": LoRAConfig(r=32),
}


def qv_skeleton() -> nn.Module:
    """Only the adapted layers of Llama-2-7B, with the same names, uninitialized."""
    with torch.device("meta"):
        layers = nn.ModuleList()
        for _ in range(32):
            attn = nn.Module()
            attn.q_proj = nn.Linear(4096, 4096, bias=False)
            attn.v_proj = nn.Linear(4096, 4096, bias=False)
            block = nn.Module()
            block.self_attn = attn
            layers.append(block)
        model = nn.Module()
        model.layers = layers
    return model.to_empty(device="cpu")


def main(argv: list[str] | None = None) -> None:
    """Print one row per adapter; with ``--out``, also write them as a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the table (without the seconds) to this .md file")
    args = ap.parse_args(argv)
    rows = []
    with torch.device("meta"):
        meta_model = LlamaForCausalLM(LLAMA2_7B)
    header = ("adapter", "trainable", "Params (%)", "safetensors", "with factors", "adapt s")
    print("{:<24} {:>11} {:>10} {:>12} {:>13} {:>8}".format(*header))
    for name, config in CONFIGS.items():
        report = parameter_report(meta_model, config)
        skeleton = qv_skeleton()
        start = time.perf_counter()
        adapted = adapt(skeleton, config)
        seconds = time.perf_counter() - start
        assert adapted.trainable_parameter_count() == report.adapter
        sizes = []
        for include in (False, True):
            with tempfile.TemporaryDirectory() as d:
                adapted.save_pretrained(d, include_factors=include)
                sizes.append(sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)))
        print(
            f"{name:<24} {report.adapter:>11,d} {report.percent:>10.4f} "
            f"{sizes[0] / 1e6:>10.2f} MB {sizes[1] / 1e6:>10.2f} MB {seconds:>8.1f}"
        )
        rows.append(
            f"| {name.replace('|', chr(92) + '|')} | {report.adapter:,d} | {report.percent:.4f} "
            f"| {report.adapter * 4:,d} | {sizes[0]:,d} | {sizes[1]:,d} |"
        )
        del adapted, skeleton
    if args.out:
        head = (
            "Model: Llama-2-7B (64 q/v projections, 4096 x 4096), adapter tensors float32\n\n"
            "| adapter | trainable | Params (%) | trainable bytes (float32) | saved bytes "
            "| saved bytes with factors |\n|---|---|---|---|---|---|\n"
        )
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(head + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()

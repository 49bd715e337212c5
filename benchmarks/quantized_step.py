"""A training step on a quantized base: float32 vs 8-bit vs 4-bit (nf4) base, TeRA vs LoRA.

The model is SmolLM2-135M's decoder shape (hidden 576, MLP 1536, 9 query / 3 key-value
heads of 64) with random weights and ``--layers`` layers (default 4) and a ``--vocab``-word
vocabulary (default 8192: with SmolLM2's 49,152 words the tied output projection, which is
never quantized, would dominate a few-layer step). Every ``nn.Linear`` of the decoder
layers is quantized with :func:`tera.adapters.quantize_model` (bitsandbytes, as
``BitsAndBytesConfig`` would); ``q_proj`` and ``v_proj`` are adapted: LoRA r=32 and TeRA
(576 | 8, 8, 9) / (576 | 8, 8, 3), the harness's configurations.

Per variant: the median time of forward + LM loss + backward + AdamW step on random tokens,
its ratio to the same method on the float32 base and to float32 LoRA (both measured in the
same repetition); the bytes of the decoder layers' weights as stored
(:func:`tera.adapters.weight_bytes`), and the bytes autograd keeps for the backward (every
tensor saved by the step's graph, counted once). Then, after the timed steps, each model on a
quantized base is merged with ``merge_and_unload()`` and the error its warning states
(requantized weights vs ``W0 + dW``, over the adapted layers) is tabulated.

Run: ``.venv/bin/python benchmarks/quantized_step.py [--layers 4] [--vocab 8192]
[--batch 2] [--length 128] [--reps 3] [--out benchmarks/results/quantized_step.md]``
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import alternate, emit, machine, markdown_table

from tera.adapters import (
    AdaptedModel,
    AdapterConfig,
    LoRAConfig,
    QuantizedMergeWarning,
    TeRAConfig,
    adapt,
    quantize_model,
    weight_bytes,
)

BASES = ("float32", "8bit", "4bit")
METHODS = ("LoRA", "TeRA")
TARGETS = ("q_proj", "v_proj")


def smollm2_like(layers: int, vocab: int) -> nn.Module:
    """SmolLM2-135M's decoder shape with random weights, ``layers`` layers deep."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def method_config(method: str) -> AdapterConfig:
    """LoRA r=32 (alpha 64) or TeRA (576 | 8,8,9) / (576 | 8,8,3) on q and v."""
    if method == "LoRA":
        return LoRAConfig(r=32, alpha=64, target_modules=list(TARGETS))
    return TeRAConfig(
        in_mode=1 << 16,  # the input dimension unsplit
        out_mode=8,
        out_modes={576: (8, 8, 9), 192: (8, 8, 3)},
        target_modules=list(TARGETS),
    )


def build(base: str, method: str, layers: int, vocab: int) -> tuple[nn.Module, int]:
    """The adapted model and the bytes of its decoder layers' weights as stored."""
    model = smollm2_like(layers, vocab)
    if base != "float32":
        quantize_model(model, base, r".*\.layers\.\d+\..*_proj")  # type: ignore[arg-type]
    stored = weight_bytes(model.model.layers)
    adapted = adapt(model, method_config(method))
    with torch.no_grad():  # away from the zero init, as after some training
        for _, p in adapted.adapter_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return adapted.train(), stored


def train_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """Forward with the LM loss, backward and an AdamW step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    return step


def saved_bytes(model: nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for one step's backward (each storage once)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta" and t.layout == torch.strided:
            storage = t.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for (ptr, _), n in seen.items() if ptr not in params)


def merge_error(model: AdaptedModel) -> list[str]:
    """``[max, rms, rms of dW]`` as the merge warning states them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizedMergeWarning)
        model.merge_and_unload()
    message = next(str(w.message) for w in caught if w.category is QuantizedMergeWarning)
    found = re.search(r"max (\S+), rms (\S+) over .* has rms (\S+)\)", message)
    assert found, message
    return list(found.groups())


def mib(n: int) -> str:
    """Bytes in MiB."""
    return f"{n / 2**20:.2f}"


def main(argv: list[str] | None = None) -> str:
    """Command line entry point; returns the Markdown it prints."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", "MatMul8bitLt")  # float32 inputs cast to float16
    torch.manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.length))
    names = {(b, m): f"{m}, {b} base" for b in BASES for m in METHODS}
    models, stored, saved = {}, {}, {}
    for (base, method), name in names.items():
        models[name], stored[name] = build(base, method, args.layers, args.vocab)
        saved[name] = saved_bytes(models[name], ids)
    steps = {name: train_step(model, ids) for name, model in models.items()}
    reference = names[("float32", "LoRA")]
    timings = alternate(steps, reference, args.reps)
    rows = []
    for (base, method), name in names.items():
        t = timings[name]
        same = timings[names[("float32", method)]]
        per_rep = [a / b for a, b in zip(t.times, same.times, strict=True)]
        rows.append(
            [
                method,
                base,
                f"{t.median_ms:.0f}",
                f"{sorted(per_rep)[len(per_rep) // 2]:.2f}",
                t.ratio_text(),
                mib(stored[name]),
                f"{stored[name] / stored[names[('float32', method)]]:.3f}",
                mib(saved[name]),
            ]
        )
    header = [
        "method",
        "base",
        "train step ms",
        "x same method, float32 base",
        "x LoRA, float32 base (min..max)",
        "decoder weights MiB",
        "x float32",
        "saved for backward MiB",
    ]
    merges = [
        [method, base, *merge_error(models[name])]
        for (base, method), name in names.items()
        if base != "float32"
    ]
    merge_header = ["method", "base", "max error", "rms error", "rms of dW"]
    tokens = args.batch * args.length
    text = (
        f"Machine: {machine()}\n\n"
        f"Model: SmolLM2-135M's decoder shape, {args.layers} layers, vocabulary {args.vocab}, "
        f"random weights; every decoder Linear quantized (bitsandbytes nf4 / LLM.int8() "
        f"with threshold 6.0) or float32; q_proj and v_proj adapted; {args.batch} x "
        f"{args.length} = {tokens} tokens per step; median of {args.reps} alternating "
        "repetitions\n\n"
        f"{markdown_table(header, rows)}\n\n"
        "merge_and_unload() after the timed steps (adapter parameters 0.01-perturbed from "
        f"their init, then {args.reps + 1} AdamW steps at lr 1e-4), over the adapted layers:\n\n"
        f"{markdown_table(merge_header, merges)}\n"
    )
    emit(text, args.out)
    return text


if __name__ == "__main__":
    main()

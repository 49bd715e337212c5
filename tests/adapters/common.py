"""Tiny models built from configs (random weights, no downloads) and the four adapter configs.

Tolerances: float32 forward passes that differ only in summation order (merged weight vs.
base + adapter, materialized dW vs. pushing x through the factors) agree to a few ulps of
the largest intermediate; on these models (outputs O(1), width <= 64) 1e-5 absolute/relative
leaves a margin of ~10x over the worst case we measured and is far below any real bug.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from tera.adapters import AdaptedModel, HiRAConfig, LoRAConfig, TeRAConfig, VeRAConfig, adapt

ATOL = RTOL = 1e-5


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(cfg).eval()


def llama(vocab_size: int = 100, hidden_size: int = 32) -> nn.Module:
    """A tiny Llama (2 layers, seed 0); v_proj is hidden -> hidden/2, like Llama-3's heads."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()


def many_adapters(kind: str, n: int) -> tuple[AdaptedModel, list[str]]:
    """A tiny Llama holding ``n`` adapters of ``kind`` named a0..a{n-1} (a0 active), each
    with its own random tensors (``randomize_adapter`` seeded by its index)."""
    config = make_config(kind, "llama")
    model = adapt(llama(), config, adapter_name="a0")
    names = [f"a{i}" for i in range(n)]
    for name in names[1:]:
        model.add_adapter(name, config)
    for i, name in enumerate(names):
        model.set_adapter(name)
        randomize_adapter(model, seed=i)
    model.set_adapter("a0")
    return model, names


def edit_meta(directory: Path, **changes: object) -> None:
    """Change fields of a saved adapter's ``adapter_config.json`` in place."""
    path = directory / "adapter_config.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


MODELS = {"mlp": mlp, "bert": bert, "llama": llama}
TARGETS = {"mlp": ["0", "2"], "bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


def make_config(kind: str, model: str, **extra):
    targets = TARGETS[model]
    if kind == "lora":
        return LoRAConfig(r=4, alpha=8, target_modules=targets, **extra)
    if kind == "vera":
        return VeRAConfig(r=8, target_modules=targets, **extra)
    if kind == "hira":
        return HiRAConfig(r=4, target_modules=targets, **extra)
    return TeRAConfig(in_mode=32, out_mode=2, target_modules=targets, **extra)  # (32 | 2, .., 2)


KINDS = ("tera", "vera", "hira", "lora")


def inputs(model: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if model == "mlp":
        return {"input": torch.randn(3, 5, 16, generator=g)}
    return {"input_ids": torch.randint(0, 100, (2, 7), generator=g)}


def forward(model: nn.Module, name: str, batch) -> torch.Tensor:
    """The model's output on ``batch``, with autograd."""
    if name == "mlp":
        return model(batch["input"])
    out = model(**batch)
    return out.logits if name == "llama" else out.last_hidden_state


@torch.no_grad()
def run(model: nn.Module, name: str, batch) -> torch.Tensor:
    """Inference output on ``batch``.

    Under ``no_grad`` the engine prices the forward only, whether or not the adapter's
    parameters require grad, so a model being trained and the same adapter loaded for
    inference take the same path and give bit-identical outputs.
    """
    return forward(model, name, batch)


@torch.no_grad()
def randomize_adapter(adapted, seed: int = 0, std: float = 0.3) -> None:
    """Give every trainable adapter tensor non-trivial values (d's around 1 for TeRA)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in adapted.adapter_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        p.copy_(
            (1.0 + noise)
            if ".d." in f".{name}." and "tera" in adapted.adapter_config.kind
            else noise
        )


def fresh(model_name: str) -> tuple[nn.Module, nn.Module]:
    """A model and an untouched deep copy of it (the base to compare with)."""
    m = MODELS[model_name]()
    return m, copy.deepcopy(m)

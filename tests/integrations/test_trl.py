"""TeRA trained with TRL's ``SFTTrainer``: through ``peft_config=`` and with an ``adapt``-ed model.

A tiny Llama from its config, a word-level tokenizer built in memory and eight sentences: three
optimizer steps. Both routes start from the same base and d's and see the same batches in the
same order (the ``Trainer``'s seeded sampler), and both run tera's layer, so their trained d's
are compared for exact equality; a saved adapter reloads to the trained model's outputs exactly
(the same operations on the same values).

``bf16=False``: float32 runs, so the two routes' d's compare exactly; bf16 autocast (TRL's
default) is tested on TeRA's kernel in tests/adapters/test_tera_kernel.py.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from tera.adapters import adapt, from_pretrained
from tera.integrations.peft import TeraConfig
from tests.adapters.common import llama

VOCAB = 64
WORDS = [f"w{i}" for i in range(VOCAB - 3)]


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def _dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(0, len(WORDS), (8, 8), generator=g).tolist()
    return Dataset.from_dict({"text": [" ".join(WORDS[j] for j in row) for row in picks]})


def _config() -> TeraConfig:
    return TeraConfig(
        in_mode=32, out_mode=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )


def _train(model, out, settings=None, resume=None, **extra) -> SFTTrainer:
    defaults = {
        "output_dir": str(out),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-2,
        "use_cpu": True,
        "bf16": False,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    args = SFTConfig(**{**defaults, **(settings or {})})
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=_dataset(), processing_class=_tokenizer(), **extra
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@torch.no_grad()
def _logits(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits


IDS = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def peft_route(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-peft")
    base = llama(vocab_size=VOCAB).train()
    before = {id(p): p.detach().clone() for p in base.parameters()}
    trainer = _train(base, out, peft_config=_config())
    trainer.save_model(str(out / "adapter"))
    return trainer.model, before, out / "adapter"


@pytest.fixture(scope="module")
def adapt_route(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-adapt")
    model = adapt(llama(vocab_size=VOCAB).train(), _config().to_tera())
    before = _snapshot(model)
    # the adapted Hugging Face model itself: tera's layers sit inside it, and TRL patches its
    # forward and reads its backbone (``.base_model`` in transformers' sense)
    _train(model.base_model, out)
    model.save_pretrained(out / "adapter")
    return model, before, out / "adapter"


def test_sft_with_peft_config_trains_only_the_ds(peft_route):
    model, before, _ = peft_route
    assert isinstance(model, PeftModel)
    params = dict(model.named_parameters())
    # PEFT wrapped the very base modules: every base tensor is the one snapshotted, unchanged
    base = [p for n, p in params.items() if ".tera_adapters." not in n]
    assert len(base) == len(before) and all(torch.equal(p, before[id(p)]) for p in base)
    fresh = get_peft_model(llama(vocab_size=VOCAB), _config())
    initial = {n: p for n, p in fresh.named_parameters() if ".tera_adapters." in n}
    assert len(initial) == 22  # d_1..d_N of q_proj and v_proj in 2 layers
    assert all(not torch.equal(params[n], p) for n, p in initial.items())  # every d moved


def test_sft_with_peft_config_saves_an_adapter_that_reloads(peft_route):
    model, _, folder = peft_route
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").stat().st_size < 4096  # 164 d's and names
    loaded = PeftModel.from_pretrained(llama(vocab_size=VOCAB), folder)
    assert torch.equal(_logits(loaded, IDS), _logits(model.eval(), IDS))


def test_sft_with_an_adapted_model_trains_only_the_ds(adapt_route):
    model, before, _ = adapt_route
    changed = _changed(model, before)
    ds = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(ds) == 22 and changed == ds


def test_sft_with_an_adapted_model_saves_an_adapter_that_reloads(adapt_route):
    model, _, folder = adapt_route
    loaded = from_pretrained(llama(vocab_size=VOCAB), folder)
    assert torch.equal(_logits(loaded, IDS), _logits(model.eval(), IDS))


def test_both_routes_reach_the_same_ds(peft_route, adapt_route):
    peft_model, _, _ = peft_route
    tera_model, _, _ = adapt_route
    peft_ds = dict(peft_model.named_parameters())
    for name, p in tera_model.adapter_parameters():
        layer, _, param = name.partition(".adapter.")
        assert torch.equal(peft_ds[f"base_model.model.{layer}.tera_adapters.default.{param}"], p)


def test_resuming_from_a_checkpoint_in_a_fresh_model_reaches_the_same_ds(tmp_path):
    # The Trainer reloads the checkpoint's d's into a new PEFT model with PEFT's load_adapter;
    # the fingerprint travels in the weights file, so the factors are checked there too. The
    # optimizer, scheduler and RNG states come back with it: the same arithmetic, exact.
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    full = _train(
        llama(vocab_size=VOCAB).train(), tmp_path / "full", settings, peft_config=_config()
    )
    checkpoint = tmp_path / "full" / "checkpoint-2"
    resumed = _train(
        llama(vocab_size=VOCAB).train(),
        tmp_path / "resumed",
        settings,
        resume=str(checkpoint),
        peft_config=_config(),
    )
    assert resumed.state.global_step == 4
    want = {n: p for n, p in full.model.named_parameters() if ".tera_adapters." in n}
    got = dict(resumed.model.named_parameters())
    assert len(want) == 22 and all(torch.equal(got[n], p) for n, p in want.items())

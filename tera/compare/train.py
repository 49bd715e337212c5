"""One fine-tuning run: train a method on a split, evaluate it, record what it cost.

Classification tasks train the model's new head together with the adapter (the head is
``modules_to_save`` and counted apart). Causal-LM tasks fine-tune on ``question -> answer``
text and are evaluated by the log-likelihood of each choice, as commonsense benchmarks
are. AdamW with linear warm-up and linear decay; everything seeded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tera.adapters import AdaptedModel, adapt
from tera.compare.examples import Example
from tera.compare.methods import Method, method_config
from tera.compare.models import LoadedModel

__all__ = [
    "DTYPE_NAMES",
    "Evaluation",
    "FineTuned",
    "RunResult",
    "TrainSettings",
    "TrainStats",
    "evaluate",
    "fine_tune",
    "load_for_run",
    "prepare",
    "train",
    "train_run",
    "trainable_state",
]


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
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype (``"float32"``, ``"bf16"``/``"bfloat16"``, ``"fp16"``)."""
        return _DTYPES[self.dtype]


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
#: The names ``TrainSettings.dtype`` accepts.
DTYPE_NAMES = tuple(_DTYPES)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy on a split and the mean negative log-likelihood of the correct answers."""

    accuracy: float
    loss: float


@dataclass
class RunResult:
    """What one run measured."""

    accuracy: float
    losses: list[float]
    adapter_params: int
    head_params: int
    base_params: int
    train_seconds: float
    memory: dict[str, int] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    @property
    def train_memory_mb(self) -> float:
        """Memory training holds beyond the base model, in MiB (see :func:`train_run`)."""
        return sum(self.memory.values()) / 2**20


class _SavedForBackward:
    """Bytes autograd keeps for the backward pass, counted once per storage.

    A ``torch.autograd.graph.saved_tensors_hooks`` context: every tensor an operation
    saves for backward goes through :meth:`pack`. The model's own parameters and buffers are
    not counted (they are in memory anyway); what remains are the activations a step holds
    until its backward, which is what separates the methods' training memory.
    """

    def __init__(self, model: nn.Module) -> None:
        self.skip = {t.untyped_storage().data_ptr() for t in _tensors(model)}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - storage-less tensors
            return tensor
        if storage.data_ptr() not in self.skip:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _weight_bytes(model: nn.Module) -> int:
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(model)
    }
    return sum(storages.values())


def _head_modules(loaded: LoadedModel) -> list[str]:
    if loaded.kind != "classifier":
        return []
    from tera.compare.folder import head_module_name

    return [head_module_name(loaded.model)]


def prepare(
    loaded: LoadedModel, method: Method, seed: int
) -> tuple[nn.Module, AdaptedModel | None]:
    """The model of one run: ``loaded`` with ``method``'s adapter (or head) trainable.

    Returns the model to train and the :class:`~tera.adapters.AdaptedModel` (``None`` for
    the head-only and zero-shot methods).
    """
    model = loaded.model
    head = _head_modules(loaded)
    out_sizes = sorted(
        {
            m.out_features
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(n.endswith("." + t) for t in loaded.target_modules)
        }
    )
    if not method.trains:  # zero-shot: the model as it is
        model.requires_grad_(False)
        return model, None
    config = method_config(method, loaded.target_modules, out_sizes, head=head, seed=seed)
    if config is None:  # head only
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
    device = _device_of(model)
    labels = torch.tensor([e.label for e in batch], device=device)
    logits = model(**enc.to(device)).logits
    return nn.functional.cross_entropy(logits.float(), labels)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    device = _device_of(model)
    enc = {k: v.to(device) for k, v in enc.items()}
    answer_mask = answer_mask.to(device)
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
) -> Evaluation:
    """Accuracy on ``examples`` and the mean loss of their correct answers.

    A classifier predicts the argmax of its head (loss: cross-entropy); a causal LM the
    choice whose tokens are most likely after the prompt (loss: the mean negative
    log-likelihood per answer token of the correct choice). The loss breaks ties between
    learning rates whose accuracies are equal (e.g. all at the majority class).
    """
    model.eval()
    correct, loss_sum = 0, 0.0
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
            logits = model(**enc.to(_device_of(model))).logits.float()
            labels = torch.tensor([e.label for e in chunk], device=logits.device)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            pred = logits.argmax(-1).tolist()
        else:
            prompts = [_prompt(e) for e in chunk for _ in e.choices]
            answers = [c for e in chunk for c in e.choices]
            enc, mask = _lm_pairs(loaded, prompts, answers, settings.max_length)
            scores = _answer_logprobs(model, enc, mask).tolist()
            lengths = mask[:, 1:].sum(-1).clamp(min=1).tolist()
            pred, pos = [], 0
            for e in chunk:
                s = scores[pos : pos + len(e.choices)]
                pred.append(max(range(len(s)), key=s.__getitem__))
                loss_sum += -s[e.label] / lengths[pos + e.label]
                pos += len(e.choices)
        correct += sum(int(e.is_correct(p)) for p, e in zip(pred, chunk, strict=True))
        bar.update(len(chunk))
    bar.close()
    n = max(len(examples), 1)
    return Evaluation(accuracy=correct / n, loss=loss_sum / n)


def _schedule(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    remaining = max(settings.steps - settings.warmup_steps, 1)
    return max(0.0, 1.0 - (step - settings.warmup_steps) / remaining)


def _ranks(adapted: AdaptedModel | None) -> dict[str, int]:
    if adapted is None:
        return {}
    return {name: layer.delta_rank() for name, layer in adapted.adapter_layers.items()}


@dataclass
class TrainStats:
    """What training measured: the losses, the wall time and the memory of one step."""

    losses: list[float]
    seconds: float
    memory: dict[str, int]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of ``model`` by name (detached CPU copies): a run's result.

    Examples
    --------
    >>> from torch import nn
    >>> m = nn.Linear(2, 2)
    >>> _ = m.bias.requires_grad_(False)
    >>> sorted(trainable_state(m))
    ['weight']
    """
    return {
        name: p.detach().to("cpu", copy=True).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def train(
    model: nn.Module,
    loaded: LoadedModel,
    examples: Sequence[Example],
    lr: float,
    settings: TrainSettings,
    seed: int = 0,
    desc: str = "",
) -> TrainStats:
    """Fine-tune the trainable parameters of ``model`` in place (AdamW, warm-up, linear decay).

    ``memory`` is what training holds beyond the base model, measured in the first step, in
    bytes (see :func:`train_run`). A loss that turns NaN stops training.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    memory: dict[str, int] = {}
    loss_fn = _classification_loss if loaded.kind == "classifier" else _lm_loss
    start = time.perf_counter()
    steps = settings.steps if params else 0
    if steps:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, settings))
        data = _batches(
            examples, min(settings.batch_size, len(examples)), torch.Generator().manual_seed(seed)
        )
        model.train()
        bar = tqdm(range(steps), desc=desc, disable=not settings.progress, leave=False)
        for step in bar:
            batch = next(data)
            if step == 0:  # what a step holds, measured once: see train_run's docstring
                saved = _SavedForBackward(model)
                with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
                    loss = loss_fn(model, loaded, batch, settings.max_length)
            else:
                loss = loss_fn(model, loaded, batch, settings.max_length)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            if step == 0:
                memory = {
                    "saved_for_backward": saved.nbytes,
                    "gradients": sum(p.grad.nbytes for p in params if p.grad is not None),
                    "optimizer_state": sum(
                        v.nbytes
                        for state in opt.state.values()
                        for v in state.values()
                        if isinstance(v, torch.Tensor) and v.dim() > 0  # not the step count
                    ),
                    "adapter_weights": 0,
                }
            losses.append(float(loss.detach()))
            if math.isnan(losses[-1]):
                break
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return TrainStats(losses, time.perf_counter() - start, memory)


def load_for_run(load: Callable[[], LoadedModel], settings: TrainSettings) -> LoadedModel:
    """``load()`` moved to ``settings.device`` and cast to ``settings.dtype``."""
    loaded = load()
    if settings.device != "cpu" or settings.torch_dtype != torch.float32:
        loaded.model.to(device=settings.device, dtype=settings.torch_dtype)
    return loaded


@dataclass
class FineTuned:
    """One run's trained model and what it cost (see :func:`fine_tune`)."""

    model: nn.Module
    adapted: AdaptedModel | None
    stats: TrainStats
    adapter_params: int
    head_params: int
    base_params: int


def fine_tune(
    loaded: LoadedModel,
    method: Method,
    examples: Sequence[Example],
    lr: float,
    settings: TrainSettings,
    seed: int = 0,
    desc: str = "",
) -> FineTuned:
    """Put ``method`` on ``loaded`` (:func:`prepare`), :func:`train` it, count what it trains.

    ``stats.memory["adapter_weights"]`` is what the adapter added to the model's weights.
    """
    base_params = sum(p.numel() for p in loaded.model.parameters())
    base_bytes = _weight_bytes(loaded.model)
    model, adapted = prepare(loaded, method, seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter_params = adapted.parameter_report().adapter if adapted is not None else 0
    stats = train(model, loaded, examples, lr, settings, seed, desc or method.name)
    if stats.memory:
        stats.memory["adapter_weights"] = max(_weight_bytes(model) - base_bytes, 0)
    return FineTuned(model, adapted, stats, adapter_params, trainable - adapter_params, base_params)


def train_run(
    load: Callable[[], LoadedModel],
    method: Method,
    train_examples: Sequence[Example],
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
    train_examples, evaluation : sequence of tera.compare.examples.Example
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

    Returns
    -------
    RunResult
        Accuracy on ``evaluation``, the training losses, parameter counts, the training
        time and ``memory``: what training holds beyond the base model, measured in the
        first step, in bytes. ``saved_for_backward`` are the tensors autograd keeps for the
        backward pass (through ``torch.autograd.graph.saved_tensors_hooks``, each
        storage once, the model's own weights left out: mostly activations),
        ``gradients`` and ``optimizer_state`` (AdamW's two moments) those of the trainable
        parameters, ``adapter_weights`` what the adapter added to the model (its trainable
        and frozen tensors). A method that does not train (zero-shot) holds nothing.
        Peak resident memory would say little on a CPU: the allocator keeps freed memory
        and the base model dominates it.

    Examples
    --------
    >>> from tera.compare.data import make_splits, synthetic_task
    >>> from tera.compare.methods import METHODS
    >>> from tera.compare.models import tiny_classifier
    >>> splits = make_splits(synthetic_task(n=64), 32, 8, 16, seed=0)
    >>> settings = TrainSettings(steps=2, batch_size=8, max_length=16, progress=False)
    >>> r = train_run(lambda: tiny_classifier(4), METHODS["tera"], splits.train,
    ...               splits.test, 1e-2, settings)
    >>> len(r.losses), r.adapter_params > 0, r.memory["saved_for_backward"] > 0
    (2, True, True)
    >>> r.memory["optimizer_state"] == 2 * r.memory["gradients"]
    True
    """
    torch.manual_seed(seed)
    loaded = load_for_run(load, settings)
    run = fine_tune(loaded, method, train_examples, lr, settings, seed, desc)
    result = evaluate(run.model, loaded, evaluation, settings, desc=f"{desc} eval")
    return RunResult(
        accuracy=result.accuracy,
        losses=run.stats.losses,
        adapter_params=run.adapter_params,
        head_params=run.head_params,
        base_params=run.base_params,
        train_seconds=run.stats.seconds,
        memory=run.stats.memory,
        ranks=_ranks(run.adapted) if with_ranks else {},
    )

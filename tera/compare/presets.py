"""Named budgets for ``tera compare``: smoke (tests), default (<= 10 min), paper-small (~1 h)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tera.compare.train import TrainSettings

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """What a preset runs.

    Attributes
    ----------
    model : str
        ``"minilm"``, ``"smollm2"``, or ``"tiny"`` / ``"tiny-lm"`` (random, for tests).
    tasks : tuple of str
        BIG-bench task names (``"synthetic"`` is a built-in toy task).
    methods : tuple of str
        Method names (see :data:`tera.compare.methods.METHODS`).
    n_train : int
        Training examples.
    n_validation : int
        Validation examples (the learning-rate search).
    n_test : int
        Test examples (the reported accuracy; fixed across seeds and methods).
    seeds : int
        Seeds per method and task.
    search_steps : int
        Steps of each learning-rate trial on the validation split.
    settings : TrainSettings
        The training budget of the reported runs.
    """

    model: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    n_train: int
    n_validation: int
    n_test: int
    seeds: int
    search_steps: int
    settings: TrainSettings

    def with_overrides(self, **changes: object) -> Preset:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


ALL = ("tera", "vera", "hira", "hira1", "lora", "head")

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        model="tiny",
        tasks=("synthetic",),
        methods=ALL,
        n_train=256,
        n_validation=64,
        n_test=128,
        seeds=2,
        search_steps=10,
        settings=TrainSettings(
            steps=20, batch_size=16, max_length=16, warmup_steps=2, progress=False
        ),
    ),
    "default": Preset(
        model="minilm",
        tasks=("multiemo/all_sentence_en",),
        methods=ALL,
        n_train=2000,
        n_validation=200,
        n_test=800,
        seeds=1,
        search_steps=40,
        # ~0.35 s per adapter step on 2 cores (MiniLM, batch 16, <= 32 tokens): 14 lr trials
        # of 40 steps (TeRA and VeRA try three rates) and 6 runs of 150: <= 10 min total
        settings=TrainSettings(steps=150, batch_size=16, max_length=32, warmup_steps=10),
    ),
    "paper-small": Preset(
        model="smollm2",
        tasks=("social_iqa", "strategyqa", "winowhy"),  # commonsense, >= 1,900 examples each
        methods=ALL,
        n_train=1000,
        n_validation=128,
        n_test=300,
        seeds=3,
        search_steps=30,
        settings=TrainSettings(
            steps=150, batch_size=8, max_length=96, warmup_steps=15, eval_batch_size=16
        ),
    ),
}
"""The named presets, ``smoke`` (tiny random model, synthetic task, < 1 min; the tests run
it), ``default`` (MiniLM on MultiEmo, every method, <= 10 min on 2 cores) and
``paper-small`` (SmolLM2-135M on three commonsense tasks, 3 seeds, about an hour).
"""

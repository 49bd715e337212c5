"""Named budgets for ``tera compare``: smoke (tests), default, paper-small, paper-gpu.

Each preset says what it runs and how long it takes, measured (see :data:`PRESETS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tera.compare.train import TrainSettings

__all__ = ["PRESETS", "Preset", "preset_from_dict"]


@dataclass(frozen=True)
class Preset:
    """What a comparison runs.

    Attributes
    ----------
    model : str
        A bundled model (``"minilm"``, ``"smollm2"``, or ``"tiny"`` / ``"tiny-lm"``: random,
        for tests) or a local Hugging Face model folder.
    tasks : tuple of str
        BIG-bench task names, ``"synthetic"`` (a built-in toy task) or JSONL/CSV task files.
    methods : tuple of str
        Method specs (:mod:`tera.compare.methods`), e.g. ``("tera", "vera(r=1024)")``.
    n_train : int
        Training examples (a smaller task is split in the same proportions).
    n_validation : int
        Validation examples (the learning-rate search).
    n_test : int
        Test examples (the reported accuracy; the same for every seed and method).
    seeds : int
        Seeds per method and task (seed 0 is the learning-rate search's winning trial).
    settings : TrainSettings
        The training budget every run gets (the learning-rate trials too).
    kind : str, optional
        ``"classifier"`` or ``"causal_lm"``, overriding what the model's config says.
    targets : tuple of str, optional
        The adapted modules; ``None``: the query and value projections found by name.
    quantize : {"4bit", "8bit"}, optional
        Quantize the base model's Linear layers with bitsandbytes (nf4 or LLM.int8(); the
        task head stays in float32) before adapting it, as QLoRA does.
    budget : str
        How long the preset takes, measured (shown by ``tera compare --help``).
    """

    model: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    n_train: int
    n_validation: int
    n_test: int
    seeds: int
    settings: TrainSettings
    kind: str | None = None
    targets: tuple[str, ...] | None = None
    quantize: str | None = None
    budget: str = ""

    def with_overrides(self, **changes: object) -> Preset:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


def preset_from_dict(data: Mapping[str, Any]) -> Preset:
    """Rebuild a :class:`Preset` from ``dataclasses.asdict`` output (``compare.json``)."""
    fields = dict(data)
    fields["settings"] = TrainSettings(**fields["settings"])
    for name in ("tasks", "methods", "targets"):
        if fields.get(name) is not None:
            fields[name] = tuple(fields[name])
    known = {f.name for f in dataclasses.fields(Preset)}
    return Preset(**{k: v for k, v in fields.items() if k in known})


#: TeRA against the parameter-matched VeRA (the paper's principle: on MiniLM r = 22), VeRA at
#: the paper's r = 256 (1.58x TeRA's parameters on MiniLM: a labelled, unmatched row), HiRA,
#: LoRA and the head alone.
DEFAULT_METHODS = ("tera", "vera(r=match)", "vera", "hira", "lora", "head")
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
        settings=TrainSettings(
            steps=20, batch_size=16, max_length=16, warmup_steps=2, progress=False
        ),
        budget="about 20 s on 2 CPU cores (measured); no GPU needed",
    ),
    "default": Preset(
        model="minilm",
        tasks=("multiemo/all_sentence_en",),
        methods=DEFAULT_METHODS,
        n_train=2000,
        n_validation=200,
        n_test=600,
        seeds=3,
        settings=TrainSettings(steps=100, batch_size=16, max_length=32, warmup_steps=10),
        budget="9.5 min on 2 idle CPU cores (measured: 569 s); not yet timed on a GPU",
    ),
    "paper-small": Preset(
        model="smollm2",
        # the tasks of the validation pilot (benchmarks/results/decoder-pilot): on winowhy
        # TeRA leaves zero-shot within 100 steps (to the majority answer); on social_iqa no
        # rate moved validation at 100 steps
        tasks=("winowhy", "strategyqa"),
        methods=("tera", "vera(r=match)", "lora(r=match)", "head"),
        n_train=1000,
        n_validation=100,
        n_test=300,
        seeds=3,
        settings=TrainSettings(
            steps=200, batch_size=4, max_length=96, warmup_steps=20, eval_batch_size=16
        ),
        budget=(
            "measured: 3.7 h of run time at one torch thread (44 runs of 200 steps plus "
            "evaluation, summed), run as two processes side by side on 2 shared CPU cores: "
            "about 3 h wall; not yet timed on a GPU"
        ),
    ),
    "paper-gpu": Preset(
        model="smollm2",
        tasks=("social_iqa", "strategyqa", "winowhy", "logical_deduction/three_objects"),
        # the paper's Table 9 rates (2e-4 .. 1e-3) at the centre: its protocol, its budget
        methods=(
            "tera(lr=(3e-4, 1e-3, 3e-3))",
            # the paper's VeRA is parameter-matched to TeRA (r = 256 = J/16 on Llama-2-7B)
            "vera(r=match, lr=(1e-3, 3e-3, 1e-2))",
            "hira(lr=(1e-4, 3e-4, 1e-3))",
            "lora(lr=(1e-4, 3e-4, 1e-3))",
            "head",
        ),
        n_train=4000,
        n_validation=300,
        n_test=1000,
        seeds=3,
        settings=TrainSettings(
            steps=1000,
            batch_size=16,
            max_length=128,
            warmup_steps=100,
            eval_batch_size=64,
            device="cuda",
            dtype="bf16",
        ),
        budget="not yet measured on a GPU (estimated several hours on one H100)",
    ),
}
"""The named presets. ``smoke``: tiny random model, synthetic task (the tests run it).
``default``: MiniLM on MultiEmo, five methods, 3 seeds (``make compare``). ``paper-small``:
SmolLM2-135M on two commonsense tasks, 3 seeds. ``paper-gpu``: the paper's protocol more
closely (four tasks, 3 seeds, 1,000 steps, bf16 on CUDA, learning-rate grids around the
paper's 2e-4 .. 1e-3). Each preset's ``budget`` says how long it takes.
"""

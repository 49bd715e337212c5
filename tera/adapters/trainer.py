"""Hugging Face ``Trainer`` that checkpoints the adapter, not the whole model (as PEFT does).

A plain ``transformers.Trainer`` trains an :class:`~tera.adapters.AdaptedModel` as it is,
but it only knows how to ``save_pretrained`` its own models and PEFT's: for anything else
it writes the full ``state_dict`` (every base weight) into each checkpoint.
:class:`AdapterTrainer` writes ``adapter_config.json`` + ``adapter_model.safetensors``
instead (a few KB for TeRA), loadable with :func:`tera.adapters.from_pretrained`, and
resumes from such a checkpoint (``trainer.train(resume_from_checkpoint=...)``) by loading
the adapter's tensors back in place. Everything else (optimizer, scheduler, RNG states,
gradient accumulation, DDP/FSDP through accelerate) is the ``Trainer``'s own.

Importing this module needs ``transformers``.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import Trainer
from transformers.utils.generic import can_return_loss, find_labels

from tera.adapters.io import CONFIG_NAME, WEIGHTS_NAME, adapter_folder
from tera.adapters.model import AdaptedModel

__all__ = ["AdapterTrainer"]


class AdapterTrainer(Trainer):
    """``transformers.Trainer`` whose checkpoints hold only the adapter.

    Use it exactly as ``Trainer`` with ``model=adapt(base, config)``.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
    >>> from tera.adapters import TeRAConfig, adapt
    >>> from tera.adapters.trainer import AdapterTrainer
    >>> base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...                                     num_hidden_layers=1, num_attention_heads=2))
    >>> model = adapt(base, TeRAConfig(in_mode=16, out_mode=4))
    >>> data = [{"input_ids": torch.arange(8), "labels": torch.arange(8)}] * 4
    >>> args = TrainingArguments("/tmp/tera-doctest-trainer", use_cpu=True, report_to=[],
    ...                          max_steps=2, per_device_train_batch_size=2, save_strategy="no",
    ...                          disable_tqdm=True)
    >>> trainer = AdapterTrainer(model=model, args=args, train_dataset=data)
    >>> trainer.train().global_step  # doctest: +ELLIPSIS
    {'train_runtime': ...}
    2
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if isinstance(model, AdaptedModel):  # Trainer inspects the class's forward, not ours
            base = type(model.base_model)
            if self.args.label_names is None:  # else evaluation computes no loss
                self.label_names = find_labels(base)  # type: ignore[no-untyped-call]
            self.can_return_loss = can_return_loss(base)  # type: ignore[no-untyped-call]

    def _adapted_model(self) -> AdaptedModel:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not isinstance(model, AdaptedModel):
            raise TypeError(
                f"AdapterTrainer trains a model returned by tera.adapters.adapt(), got "
                f"{type(model).__name__}; use transformers.Trainer for other models"
            )
        return model

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, object] | None = None
    ) -> None:
        """Write the adapter (not the base weights) to ``output_dir``."""
        directory = output_dir if output_dir is not None else self.args.output_dir
        if directory is None:
            raise ValueError("no output_dir: set TrainingArguments.output_dir")
        model = self._adapted_model()
        if self.args.should_save:
            model.save_pretrained(directory)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(directory)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: object = None) -> None:
        """Load every adapter saved in ``resume_from_checkpoint`` back into the model.

        All adapters of the model, each from where ``save_pretrained`` wrote it
        (``"default"`` in the checkpoint folder, any other in ``<checkpoint>/<name>``),
        whichever is active (:meth:`AdaptedModel.load_adapter_weights`).
        """
        target = model if isinstance(model, AdaptedModel) else self._adapted_model()
        if not _holds_adapters(resume_from_checkpoint, target):
            # a checkpoint of a plain Trainer (the full state dict)
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[arg-type]
            return
        target.load_adapter_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """Load the adapters of the best checkpoint (``load_best_model_at_end=True``).

        ``Trainer``'s own looks for a full ``model.safetensors`` (or PEFT's model) and
        fails on an adapter checkpoint.
        """
        best = self.state.best_model_checkpoint
        model = self._adapted_model()
        if best is None or not _holds_adapters(best, model):
            super()._load_best_model()
            return
        model.load_adapter_weights(best)


def _holds_adapters(checkpoint: str, model: AdaptedModel) -> bool:
    """Whether ``checkpoint`` holds an adapter folder of ``model`` (as save_pretrained writes)."""
    return any(
        all(
            os.path.isfile(os.path.join(checkpoint, adapter_folder(name), file))
            for file in (CONFIG_NAME, WEIGHTS_NAME)
        )
        for name in model.adapter_names
    )

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

from transformers import Trainer

from tera.adapters.io import CONFIG_NAME, WEIGHTS_NAME
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
        """Load the adapter saved in ``resume_from_checkpoint`` back into the model."""
        has_adapter = all(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        )
        if not has_adapter:  # a checkpoint of a plain Trainer (the full state dict)
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[arg-type]
            return
        target = model if isinstance(model, AdaptedModel) else self._adapted_model()
        target.load_adapter_weights(resume_from_checkpoint)

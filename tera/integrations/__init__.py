"""``tera.integrations``: TeRA inside the tools where fine-tuning already happens.

Optional: each module imports the package it integrates with, and nothing here is imported by
``import tera``.

* :mod:`tera.integrations.peft` registers TeRA as a Hugging Face PEFT method, so that
  ``peft.get_peft_model(model, TeraConfig(...))``, ``PeftModel.from_pretrained``, TRL's
  ``SFTTrainer(peft_config=...)`` and accelerate/FSDP run TeRA on tera's own layer, factors and
  kernels.
"""

__all__: list[str] = []

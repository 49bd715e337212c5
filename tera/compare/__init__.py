"""``tera.compare``: a fair fine-tuning comparison of adapters on real models and data.

:func:`tera.compare.run.compare` runs a :class:`~tera.compare.presets.Preset`: every method of
``tera.compare.methods`` (configured as the paper recommends) on the same model, splits and
budget (``tera.compare.train``), each at the learning rate that does best on the validation
split, reported on a fixed test split by ``tera.compare.report`` (``results.json``, a
Markdown table like the paper's Table 2 with Wilcoxon p-values, plots).
``tera.compare.data`` holds the tasks (BIG-bench, read offline; a synthetic one) and their
splits, ``tera.compare.models`` the models (MiniLM, SmolLM2, tiny test models) and
``tera.compare.cache`` where downloads are kept (``$TERA_CACHE``, else ``~/.cache/tera``).
"""

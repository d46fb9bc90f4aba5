# The two README commands. Each creates the virtual environment on first use (about 3 minutes).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: quickstart test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## Run the main job: a small study on the embedded synthetic dataset, local Ray, local MLflow store.
quickstart: $(VENV)/.installed
	$(VENV)/bin/dynconv tune tune_jobs/quickstart.yaml

## Lint, then the whole test suite.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check dynconv tests benchmarks
	$(PY) -m pytest

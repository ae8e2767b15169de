# heliostat developer commands. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-workflows bench-scheduler lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/python -m examples.etl.pipeline

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/core.py

bench-workflows: venv
	$(BIN)/python benchmarks/workflows.py

bench-scheduler: venv
	$(BIN)/python benchmarks/scheduler.py

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check heliostat tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

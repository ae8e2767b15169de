# heliostat developer commands. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test docs docs-serve bench bench-workflows bench-scheduler bench-cluster lint proto clean

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

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken reference fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Serve it at http://127.0.0.1:8000, rebuilt on every change.
docs-serve: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

bench: venv
	$(BIN)/python benchmarks/core.py

bench-workflows: venv
	$(BIN)/python benchmarks/workflows.py

bench-scheduler: venv
	$(BIN)/python benchmarks/scheduler.py

bench-cluster: venv
	$(BIN)/python benchmarks/cluster.py

# The cluster's gRPC modules, generated from proto/ into heliostat/cluster/v1/ (committed).
PROTOS := $(wildcard proto/heliostat/cluster/v1/*.proto)
proto: venv
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check heliostat tests

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache

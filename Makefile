# One command each: `make demo` runs the demo, `make test` the tests. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch's CPU build first: a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

$(BIN)/semiamort: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: install demo test lint
install: $(BIN)/semiamort

demo: install
	$(BIN)/semiamort demo --force

test: install
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests

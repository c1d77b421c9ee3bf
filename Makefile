# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment from pyproject.toml on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/intent demo

test: $(BIN)/activate
	$(BIN)/ruff check intent training tests benchmarks
	$(BIN)/python -m pytest

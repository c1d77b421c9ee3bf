# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment from pyproject.toml on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test chromium

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/intent demo

test: $(BIN)/activate chromium
	$(BIN)/ruff check intent training tests benchmarks
	$(BIN)/python -m pytest

# The console's browser tests drive Debian's Chromium through Playwright, which cannot download a
# browser of its own here. Installed where missing, as root (CI runs as root); otherwise they skip
# saying why, except under CI=true, where they fail.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing and this is not root: install it (apt-get install chromium) for the browser tests"; \
	  fi; \
	}

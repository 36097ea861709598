# Two entry points that work on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs the project with what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the quix-streams peer of bench/stream.py --peers: its own environment (it pins an older confluent-kafka)
PEERS_VENV ?= .venv-peers

.PHONY: demo test lint bench bench-peers peers-venv install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

$(PEERS_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e '.[peers]'
	touch $@

peers-venv: $(PEERS_VENV)/bin/.installed

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

bench-peers: $(BIN)/.installed $(PEERS_VENV)/bin/.installed
	$(BIN)/python bench/stream.py --peers
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) $(PEERS_VENV) .flowaudit .pytest_cache .mypy_cache .ruff_cache *.egg-info

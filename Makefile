# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ANVIL_DIR := .tmp/anvil

.PHONY: venv demo test lint typecheck bench clean anvil

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/consortium demo

# A real Ethereum JSON-RPC node for the chain tests, from the npm registry (skipped if unavailable).
anvil:
	@ls $(ANVIL_DIR)/node_modules/@foundry-rs/anvil-*/bin/anvil >/dev/null 2>&1 || \
	  npm install --prefix $(ANVIL_DIR) --no-audit --no-fund --loglevel=error @foundry-rs/anvil@1.7.1 \
	  || echo "anvil could not be installed: its test will be skipped"

test: $(STAMP) anvil
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/consortium bench ledger
	$(BIN)/consortium bench secagg --n 10,100 --d 10000,100000
	$(BIN)/consortium bench anchor
	$(BIN)/consortium bench rounds

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

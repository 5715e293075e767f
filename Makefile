# imageready: two commands on a fresh Debian 12 machine, as root.
#   make demo   run the main job end to end on the built-in simulated fleet (azsim)
#   make test   lint, type-check and run the project's own tests
# Every install step lives here: system packages (apt), the virtualenv (PyPI), Allure 3 (npm).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# tools the tests and the demo need from Debian
APT_PACKAGES := debootstrap chromium chromium-driver ripgrep util-linux ca-certificates python3-venv mono-mcs
APT_COMMANDS := debootstrap chromium chromedriver rg unshare nsenter mcs mono
PYTEST_WORKERS ?= 2
REPORT_DIR ?= reports/out

.PHONY: help bootstrap system venv node lint typecheck test test-fast test-floor demo report bench clean

help:
	@echo "make demo    run the main job end to end on the simulated fleet"
	@echo "make test    lint, type-check and run the tests (about 15 min on 2 cores)"
	@echo "make report  turn $(REPORT_DIR)/allure-results into one self-contained HTML file"
	@echo "make bench   the fleet benchmark: checks and apply phases against azsim (under 10 min)"

bootstrap: system venv node

# Debian packages: installed only when a command is missing, so a prepared machine stays offline.
system:
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing ensurepip"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install: $(APT_PACKAGES)" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(VENV)/.stamp: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[azsim,dev]'
	@touch $@

venv: $(VENV)/.stamp

reports/node_modules/.stamp: reports/package.json reports/package-lock.json $(VENV)/.stamp
	cd reports && ../$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node: reports/node_modules/.stamp

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# pytest's exit code 5 ("no tests collected") is a failure here: an empty run proves nothing.
test: bootstrap lint typecheck
	@rc=0; $(BIN)/pytest tests -n $(PYTEST_WORKERS) --dist loadscope -p no:cacheprovider || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests were collected" >&2; exit 1; fi; exit $$rc

# The lowest Azure SDK versions pyproject.toml allows (tests/floor-constraints.txt), in their own
# virtualenv, running the tests that drive the SDKs against azsim.
FLOOR_VENV := .venv-floor
test-floor: system
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c tests/floor-constraints.txt -e '.[azsim,dev]'
	$(FLOOR_VENV)/bin/python -m pip check
	$(FLOOR_VENV)/bin/pytest tests/azsim tests/test_azure_layer.py -n $(PYTEST_WORKERS) --dist loadscope -p no:cacheprovider

# The fleet benchmark (benchmarks/README.md): one table, each figure with its command.
bench: system venv
	$(BIN)/python benchmarks/fleet_bench.py

demo: bootstrap
	@bash scripts/demo.sh

report: node
	@bash scripts/report.sh $(REPORT_DIR)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) reports/node_modules $(REPORT_DIR) .azsim .pytest_cache .mypy_cache .ruff_cache

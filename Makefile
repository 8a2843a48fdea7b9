# The two commands of the README: `make demo` brings mm up and runs its demo batch; `make test` runs the tests.
# Both work from a clean clone on a stock Debian 12 with its own python3: mm goes into a virtual
# environment (.venv; PEP 668 keeps pip out of the system Python) and apt installs what is missing.
# `make shell` opens a shell with that environment active; `mm` is .venv/bin/mm.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOGS := .mm-run
DEMO_EXTRAS := server,llama
# Passed to `mm up` by `make demo` (e.g. DEMO_FLAGS=--exit to stop once the demo batch is done).
DEMO_FLAGS ?=
# Commands the tests run, each from the Debian package of the same name.
TEST_TOOLS := redis-server redis-sentinel openssl docker-compose chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The venv's bin first on PATH, as `activate` does, for anything the tests or mm look up by name.
VENV_PATH := PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)"

# $(call quietly,NAME,COMMAND): run COMMAND with its output in $(LOGS)/NAME.log, printed only if it fails.
quietly = mkdir -p $(LOGS) && { $(2); } >$(LOGS)/$(1).log 2>&1 \
	|| { cat $(LOGS)/$(1).log; echo "make: $(1) failed (log: $(LOGS)/$(1).log)" >&2; exit 1; }

# $(call apt_install,PACKAGES,CHECK): apt-get install PACKAGES unless the shell test CHECK passes.
apt_install = if ! { $(2); } >/dev/null 2>&1; then \
	echo "apt-get install $(1)"; \
	$(call quietly,apt,$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends $(1)); \
	fi

# $(call apt_commands,COMMANDS): apt-get install the COMMANDS (package = command name) not on PATH.
apt_commands = missing=""; for c in $(1); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	echo "apt-get install$$missing"; \
	$(call quietly,apt,$(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends $$missing); \
	fi

.PHONY: venv install install-test demo test test-unit test-fast lint typecheck shell

# The virtual environment, made by the system's python3 (Debian splits its venv module into python3-venv).
$(BIN)/pip:
	@$(call apt_install,python3-venv,$(PYTHON) -c 'import ensurepip')
	@echo "creating $(VENV) with $$(command -v $(PYTHON))"
	@$(call quietly,venv,$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); false; })

venv: $(BIN)/pip

# mm with its servers and the embedded llama.cpp runtime, redone only when the package's metadata
# changes. gcc and g++: llama-cpp-python compiles from source when pip has no wheel for it yet.
$(VENV)/.installed-demo: setup.cfg pyproject.toml | $(BIN)/pip
	@$(call apt_commands,redis-server)
	@$(call apt_install,gcc g++,command -v gcc && command -v g++)
	@echo "pip install -e '.[$(DEMO_EXTRAS)]' into $(VENV) (the first time, llama-cpp-python compiles for about 6 minutes)"
	@$(call quietly,pip,$(BIN)/pip install --disable-pip-version-check -e '.[$(DEMO_EXTRAS)]')
	@touch $@

install: $(VENV)/.installed-demo

# What the tests need: the system tools they start, and mm with its [test] extra (servers, llama, clients).
$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/pip
	@$(call apt_commands,$(TEST_TOOLS))
	@$(call apt_install,gcc g++,command -v gcc && command -v g++)
	@echo "pip install -e '.[test]' into $(VENV) (the first time, llama-cpp-python compiles for about 6 minutes)"
	@$(call quietly,pip,$(BIN)/pip install --disable-pip-version-check -e '.[test]')
	@touch $@

install-test: $(VENV)/.installed-test

demo: install
	$(VENV_PATH) $(BIN)/mm up --demo $(DEMO_FLAGS)

# Every test this machine can run: the unit, integration and faults tiers (tests/conftest.py).
test: install-test
	$(VENV_PATH) $(BIN)/python -m pytest

# The unit tier: pure code, no services or child processes, in seconds.
test-unit: install-test
	$(VENV_PATH) $(BIN)/python -m pytest -m unit

test-fast: install-test
	$(VENV_PATH) $(BIN)/python -m pytest -m "not llama and not slow"

# ruff and mypy, configured in pyproject.toml, from the [test] extra.
lint: install-test
	$(BIN)/ruff check

# mypy sees workers/ and beat/ under their installed names, mm.workers and mm.beat, through
# $(MYPY_LAYOUT)/mm/{workers,beat}, symlinks to them (mypy does not follow the editable install's
# import hook; pyproject.toml's [tool.mypy] says more).
MYPY_LAYOUT := build/mypy-layout
$(MYPY_LAYOUT)/mm/workers $(MYPY_LAYOUT)/mm/beat:
	@mkdir -p $(MYPY_LAYOUT)/mm && ln -sfn ../../../$(notdir $@) $@

typecheck: install-test $(MYPY_LAYOUT)/mm/workers $(MYPY_LAYOUT)/mm/beat
	$(BIN)/mypy

# An interactive shell with the venv active; without a terminal, how to activate it.
shell: install
	@if [ -t 0 ] && [ -t 1 ]; then \
		echo "a shell with $(VENV) active (mm is $(BIN)/mm); exit to leave"; \
		. $(BIN)/activate && exec "$${SHELL:-/bin/bash}" -i; \
	else \
		echo "mm is installed in $(VENV): run . $(BIN)/activate (or call $(BIN)/mm directly)"; \
	fi

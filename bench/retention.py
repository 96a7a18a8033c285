"""Retention: how fast pruning deletes, and what it costs the API's submits while it runs (SQLite and PostgreSQL).

For each store: fill a backlog of finished jobs past ``JOB_RETENTION`` (rows
written straight into the table, ids UUIDv7 of ten days ago as the API would
have made them, half with a result row), start ``jobrelay api`` (gunicorn,
no workers) and measure single submits paced at ``--rate`` for ``--seconds``
(the baseline), then start a real ``jobrelay scheduler`` with the default
``PRUNE_*`` settings, wait for its first prune batch and pace the same load
again while it prunes. The capacity is the rows the scheduler deleted during
that second window over its length (a backlog that ran out first is reported
as such: make ``--rows`` larger).

    python -m bench.retention --rows 400000 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select

from bench.api_submit import drop_database, paced, postgres_url, start_api
from bench.report import Output, add_output_argument, machine, met
from services.scheduler.pruning import DEFAULT_BATCH_ROWS, DEFAULT_EVERY_S, DEFAULT_PAUSE_S
from shared.ids import id_lower_bound
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.models import jobs

#: The no-op drain rate of issue #26 (bare Dramatiq on the reference machine) and the capacity asked of pruning.
DRAIN_JOBS_PER_S = 4000
TARGET_ROWS_PER_S = 10 * DRAIN_JOBS_PER_S
#: The most submit p99 may rise while pruning runs.
TARGET_P99_RISE = 1.2
FILL_CHUNK = 5000


def fill(engine: Engine, rows: int) -> None:
    """``rows`` jobs created ten days ago and finished eight days ago, oldest first, in chunks of one transaction."""
    created = datetime.now(UTC) - timedelta(days=10)
    finished = created + timedelta(days=2)
    base = int(id_lower_bound(created).replace("-", ""), 16)
    for start in range(0, rows, FILL_CHUNK):
        batch = []
        for index in range(start, min(rows, start + FILL_CHUNK)):
            # One id per row, in the 62 random bits of the same millisecond's UUIDv7: ordered like real ones.
            h = f"{base + index:032x}"
            batch.append(
                {
                    "id": f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
                    "task": "diagnostics.echo",
                    "queue": "default",
                    "status": "succeeded",
                    "args": {"message": "bench"},
                    "max_retries": 3,
                    "attempts": 1,
                    "result": {"echo": "bench"} if index % 2 else None,
                    "created_at": created,
                    "started_at": created,
                    "finished_at": finished,
                    "updated_at": finished,
                    "published_at": created,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(jobs), batch)


def count_old(engine: Engine) -> int:
    cutoff = id_lower_bound(datetime.now(UTC) - timedelta(days=1))
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs).where(jobs.c.id < cutoff)).scalar_one())


def start_scheduler(tmp: Path, database_url: str, redis_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp),
        "SCHEDULER_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "LOG_LEVEL": "WARNING",
    }
    for name in ("PRUNE_EVERY", "PRUNE_BATCH", "PRUNE_PAUSE_S", "JOB_RETENTION"):
        env.pop(name, None)  # the defaults users get
    command = [sys.executable, "-m", "services.cli", "scheduler"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_pruning(engine: Engine, before: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the first batch is gone: the scheduler booted, took the lease and reached a prune tick."""
    deadline = time.monotonic() + timeout_s
    while count_old(engine) >= before:
        if process.poll() is not None:
            raise RuntimeError("the scheduler exited before pruning (run it by hand to see its logs)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the scheduler pruned nothing within {timeout_s:.0f} s")
        time.sleep(0.05)


def measure(tmp: Path, database_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_store_engine(database_url, long_statements=True)
    migrate(engine)
    started = time.monotonic()
    fill(engine, args.rows)
    fill_s = time.monotonic() - started
    api, url = start_api(tmp, database_url, redis_url, args.workers)
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        baseline = paced(url, args.rate, args.seconds)
        before = count_old(engine)
        scheduler = start_scheduler(tmp, database_url, redis_url)
        wait_for_pruning(engine, before, scheduler, timeout_s=DEFAULT_EVERY_S + 60)
        left_at_start = count_old(engine)
        window_started = time.monotonic()
        during = paced(url, args.rate, args.seconds)
        window_s = time.monotonic() - window_started
        left_at_end = count_old(engine)
    finally:
        for process in (scheduler, api):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
        engine.dispose()
    return {
        "rows": args.rows,
        "fill_s": fill_s,
        "baseline": baseline,
        "during": during,
        "pruned": left_at_start - left_at_end,
        "window_s": window_s,
        "ran_out": left_at_end == 0,
        "rows_per_s": (left_at_start - left_at_end) / window_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000, help="finished jobs past the retention to start with")
    parser.add_argument("--seconds", type=int, default=10, help="length of each paced window")
    parser.add_argument("--rate", type=float, default=500, help="single submits per second in both windows")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    measured: dict[str, dict[str, Any] | None] = {}
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jobrelay-retention-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = RedisServer(tmp / "redis").start()
        try:
            for name, database_url in {"SQLite": f"sqlite:///{tmp}/jobs.db", "PostgreSQL": postgres_url()}.items():
                if database_url is None:
                    measured[name] = None
                    rows.append(f"| {name} | not measured: no PostgreSQL reachable | | | | |")
                    continue
                (tmp / name).mkdir()
                try:
                    figures = measure(tmp / name, database_url, server.url, args)
                finally:
                    if name == "PostgreSQL":
                        drop_database(database_url)
                measured[name] = figures
                rise = figures["during"]["p99"] / figures["baseline"]["p99"]
                capacity = f"{figures['rows_per_s']:,.0f}" + (" (backlog ran out)" if figures["ran_out"] else "")
                rows.append(
                    f"| {name} | {capacity} | {figures['baseline']['p99']:.1f} | {figures['during']['p99']:.1f} "
                    f"| {rise:.2f}x | {met(figures['rows_per_s'] >= TARGET_ROWS_PER_S)}, "
                    f"{met(rise <= TARGET_P99_RISE)} |"
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    out = Output(args.out)
    settings = {
        "rows": args.rows,
        "seconds": args.seconds,
        "rate": args.rate,
        "api_workers": args.workers,
        "PRUNE_EVERY": DEFAULT_EVERY_S,
        "PRUNE_BATCH": DEFAULT_BATCH_ROWS,
        "PRUNE_PAUSE_S": DEFAULT_PAUSE_S,
    }
    link = out.publish("retention", {"machine": machine(), "settings": settings, "stores": measured})
    body = f"""
A backlog of {args.rows:,} finished jobs past `JOB_RETENTION` (half with an inline result), then
`jobrelay api` ({args.workers} gunicorn workers) taking single submits paced at {args.rate:,.0f}/s for
{args.seconds} s (latency from each request's scheduled send time, as in "API submissions"), first
alone, then while one `jobrelay scheduler` with the default settings (`PRUNE_EVERY={DEFAULT_EVERY_S}s`,
`PRUNE_BATCH={DEFAULT_BATCH_ROWS}`, `PRUNE_PAUSE_S={DEFAULT_PAUSE_S}`) prunes the backlog. Rows/s: the
rows deleted during the second window over its length. Everything shares the machine's cores.
Machine: {machine()}.

| store | pruned rows/s | submit p99 ms, alone | while pruning | p99 ratio | verdicts |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Targets: pruning at least {TARGET_ROWS_PER_S:,} rows/s (ten times the no-op drain rate of
{DRAIN_JOBS_PER_S:,} jobs/s), and submit p99 while it runs at most {TARGET_P99_RISE:.1f}x the p99 without it.

{link}
"""
    out.write_section("Retention", body)


if __name__ == "__main__":
    main()

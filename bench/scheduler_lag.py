"""Scheduler fire lag: how long after its scheduled time a tick's job is published.

Starts a private Redis, a fresh SQLite job store with the built-in catalog
registered, and one real ``jobrelay scheduler`` process with a
``schedules.toml`` holding one schedule every second (the built-in
housekeeping runs alongside, as in production). After ``--seconds`` it
stops the scheduler and reads every tick's job: the lag is the row's
``published_at`` (stamped once Redis took the message) minus the tick's
scheduled time (the job id's timestamp). The target is 100 ms.

    python -m bench.scheduler_lag --seconds 60
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.report import Output, add_output_argument, machine
from services.scheduler.ticks import id_time
from services.worker.tasks import load_task_modules
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobFilter, JobStore
from shared.store.tasks import TaskRegistry

TARGET_MS = 100.0
SCHEDULES = """\
[[schedule]]
id = "bench-tick"
task = "diagnostics.echo"
args = { message = "tick" }
interval_s = 1
"""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def histogram_share_within(metrics_text: str, schedule: str, bound: str = "0.1") -> tuple[float, float]:
    """(observations at or under ``bound`` seconds, all observations) of the scheduler's own lag histogram."""
    within = total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("jobrelay_schedule_lag_seconds_bucket") or f'schedule="{schedule}"' not in line:
            continue
        if f'le="{bound}"' in line:
            within = float(line.split()[-1])
        if 'le="+Inf"' in line:
            total = float(line.split()[-1])
    return within, total


def measure(seconds: float) -> tuple[list[float], tuple[float, float], float]:
    """Lags in ms of every tick fired in ``seconds``, the histogram share, and the 1-minute load average."""
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            database_url = f"sqlite:///{tmp}/jobs.db"
            engine = create_store_engine(database_url)
            migrate(engine)
            TaskRegistry(engine).register(load_task_modules().specs(), registered_by="bench")
            schedules_file = Path(tmp) / "schedules.toml"
            schedules_file.write_text(SCHEDULES)
            port = free_port()
            env = {
                **os.environ,
                "REDIS_URL": server.url,
                "DATABASE_URL": database_url,
                "DATA_DIR": tmp,
                "SCHEDULES_FILE": str(schedules_file),
                "SCHEDULER_METRICS_BIND": f"127.0.0.1:{port}",
                "LOG_LEVEL": "WARNING",
            }
            process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "scheduler"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(seconds)
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    metrics_text = resp.read().decode()
                load_1m = os.getloadavg()[0]
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
            jobs = JobStore(engine).page(JobFilter(schedule_id="bench-tick"), limit=500).items
            # The page is newest first; the lags go in tick order.
            lags = [
                (job.published_at - id_time(job.id)).total_seconds() * 1000
                for job in reversed(jobs)
                if job.published_at
            ]
            engine.dispose()
            return lags, histogram_share_within(metrics_text, "bench-tick"), load_1m
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the scheduler runs")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    lags, (within, total), load_1m = measure(args.seconds)
    if not lags:
        raise SystemExit("no tick fired; is the scheduler starting? (run it by hand to see its logs)")
    p50, p95, p99 = (percentile(lags, q) for q in (50, 95, 99))
    worst, mean = max(lags), statistics.fmean(lags)
    met = worst <= TARGET_MS
    out = Output(args.out)
    link = out.publish(
        "scheduler_lag",
        {
            "machine": machine(),
            "settings": {"seconds": args.seconds},
            "lags_ms": lags,
            "load_1m": load_1m,
            "target_ms": TARGET_MS,
        },
    )
    body = f"""
One `jobrelay scheduler` process, a schedule every second (`diagnostics.echo`) next to the built-in
housekeeping, a private Redis and a SQLite job store, for {args.seconds:.0f} s ({len(lags)} ticks).
Lag: the job row's `published_at` (stamped after Redis took the message) minus the tick's scheduled
time, so it includes the row insert and the publish. Load average (1 min) at the end: {load_1m:.2f}.
Machine: {machine()}.

| p50 | p95 | p99 | max | mean |
| --- | --- | --- | --- | --- |
| {p50:.1f} ms | {p95:.1f} ms | {p99:.1f} ms | {worst:.1f} ms | {mean:.1f} ms |

The scheduler's own `jobrelay_schedule_lag_seconds` histogram counted {within:.0f} of {total:.0f} fires
within 100 ms. Target: every fire published within {TARGET_MS:.0f} ms of its scheduled time on an
idle machine: **{"met" if met else "not met"}**.

{link}
"""
    out.write_section("Scheduler fire lag", body)


if __name__ == "__main__":
    main()

"""End-to-end latency, submit to started and submit to finished, through the real stack.

Starts ``jobrelay up`` (embedded Redis, SQLite, gunicorn, the worker, the
scheduler) and submits ``diagnostics.echo`` jobs over HTTP: first one at a
time on an idle system, then at a steady rate (``--rate``). Latencies come
from the job rows (``created_at`` is stamped by the API, ``started_at`` by
the worker's claim, ``finished_at`` by its final write), on one clock.

    python -m bench.latency --jobs 300 --rate 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from bench.report import Output, add_output_argument, machine, percentile
from tests.e2e.conftest import Stack, start_stack, stop_stack


def submit(stack: Stack, opener: urllib.request.OpenerDirector) -> str:
    req = urllib.request.Request(
        stack.base_url + "/v1/jobs",
        data=b'{"task": "diagnostics.echo", "args": {"message": "x"}}',
        headers={"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"},
        method="POST",
    )
    with opener.open(req, timeout=10) as resp:
        return str(json.loads(resp.read())["id"])


def latencies(stack: Stack, ids: list[str]) -> tuple[list[float], list[float]]:
    started, finished = [], []
    for job_id in ids:
        job = stack.wait_job(job_id, {"succeeded"}, timeout_s=30)
        created = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
        started.append((datetime.fromisoformat(job["started_at"].replace("Z", "+00:00")) - created).total_seconds())
        finished.append((datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")) - created).total_seconds())
    return started, finished


def idle_run(stack: Stack, n: int) -> list[str]:
    opener = urllib.request.build_opener()
    ids = []
    for _ in range(n):
        job_id = submit(stack, opener)
        stack.wait_job(job_id, {"succeeded"}, timeout_s=30)
        ids.append(job_id)
        time.sleep(0.05)  # let the worker go idle again
    return ids


def paced_run(stack: Stack, n: int, rate: float) -> list[str]:
    """Submit ``n`` jobs at ``rate`` per second from 4 client threads."""
    ids: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()

    def client(offset: int) -> None:
        opener = urllib.request.build_opener()
        for i in range(offset, n, 4):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            job_id = submit(stack, opener)
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {statistics.median(ms):.1f} | {percentile(ms, 0.95):.1f} | {percentile(ms, 0.99):.1f} "
        f"| {max(ms):.1f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs per second for the loaded run")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jobrelay-latency-") as tmp:
        stack = start_stack(Path(tmp))
        try:
            idle_started, idle_finished = latencies(stack, idle_run(stack, args.jobs))
            loaded_started, loaded_finished = latencies(stack, paced_run(stack, args.jobs, args.rate))
        finally:
            stop_stack(stack)
    out = Output(args.out)
    runs = {
        "idle_started": idle_started,
        "idle_finished": idle_finished,
        f"{args.rate:.0f}/s_started": loaded_started,
        f"{args.rate:.0f}/s_finished": loaded_finished,
    }
    link = out.publish(
        "latency",
        {
            "machine": machine(),
            "settings": {"jobs": args.jobs, "rate": args.rate, "api_workers": 2, "worker": "2 processes x 4 threads"},
            "ms": {name: [v * 1000 for v in values] for name, values in runs.items()},
            "targets_ms": [(5, "idle p50 target"), (25, "idle p99 target"), (50, "loaded p99 target")],
        },
    )
    body = f"""
`diagnostics.echo` through `jobrelay up` (gunicorn 2 workers, 2 worker processes x 4 threads, embedded
Redis, SQLite), {args.jobs} jobs per run. Idle: one job at a time, 50 ms apart. Loaded: {args.rate:.0f}
jobs/s from 4 client threads. Milliseconds from the API's `created_at` to the worker's `started_at` and
`finished_at`. Machine: {machine()}.

| run | p50 | p95 | p99 | max |
| --- | --- | --- | --- | --- |
{row("idle, submit to started", idle_started)}
{row("idle, submit to finished", idle_finished)}
{row(f"{args.rate:.0f}/s, submit to started", loaded_started)}
{row(f"{args.rate:.0f}/s, submit to finished", loaded_finished)}

Idle targets: p50 under 5 ms ({"met" if statistics.median(idle_started) < 0.005 else "not met"}), p99 under 25 ms
({"met" if percentile(idle_started, 0.99) < 0.025 else "not met"}). Loaded target (at about half of what this
stack sustains end to end): p99 under 50 ms ({"met" if percentile(loaded_started, 0.99) < 0.05 else "not met"}).
Idle workers wait in `BLPOP` (`services/worker/consumer.py`) on a wake-up list that every enqueue
pushes to (`shared/broker/waking.py`), so they start a job as soon as it is published instead of on their
next poll, at one Redis command per second per idle consumer.

{link}
"""
    out.write_section("End-to-end latency", body)


if __name__ == "__main__":
    main()

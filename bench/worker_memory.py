"""Worker memory over a long drain: does a jobrelay worker's resident memory grow with the jobs it has run?

Preloads N no-op jobs into a fresh private Redis and SQLite job store (in
batches, as ``bench.worker_throughput`` does), starts one ``jobrelay worker``
(the supervisor and its P worker processes of T threads) and, each time
another ``--every`` jobs have been acked, reads the ``VmRSS`` of every worker
process from ``/proc``. The figure is the growth of their sum from the first
sample to the last; the target is under 10%.

    python -m bench.worker_memory --jobs 100000 --every 10000
    python -m bench.worker_memory --jobs 20000 --every 2000      # the quick form
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.procs import rss_kib, stop, wait_for_children
from bench.report import Output, add_output_argument, machine, met
from bench.worker_throughput import MSGS, QUEUE, preload_jobrelay
from shared.redis_server import RedisServer, free_port

TARGET_GROWTH = 0.10
POLL_S = 0.01


def sample(supervisor: int, workers: list[int], done: int) -> dict[str, Any]:
    return {"done": done, "children_kib": [rss_kib(pid) for pid in workers], "supervisor_kib": rss_kib(supervisor)}


def measure(n: int, every: int, processes: int, threads: int) -> tuple[list[dict[str, Any]], float, list[str]]:
    """RSS samples every ``every`` jobs done, the drain's seconds, and anything that makes them suspect."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jobrelay-memory-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        log_path = Path(tmp) / "worker.log"
        try:
            database_url = f"sqlite:///{tmp}/jobs.db"
            preload_jobrelay(server.url, database_url, n)
            print(f"preloaded {n:,} jobs", flush=True)
            client = redis.Redis.from_url(server.url)
            env = {
                **os.environ,
                "REDIS_URL": server.url,
                "DATABASE_URL": database_url,
                "DATA_DIR": tmp,
                "LOG_LEVEL": "WARNING",
                "TASK_MODULES": "bench.noop_tasks",
                "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
            }
            command = [sys.executable, "-m", "services.cli", "worker", "--queues", QUEUE,
                       "--processes", str(processes), "--threads", str(threads)]  # fmt: skip
            with log_path.open("wb") as log:
                worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    workers = wait_for_children(worker.pid, processes)
                    samples = []
                    marks = [*range(every, n, every), n]
                    deadline = time.monotonic() + 3600
                    first_ack = 0.0
                    while marks:
                        done = n - int(client.hlen(MSGS))
                        if done and not first_ack:
                            first_ack = time.monotonic()
                        if done >= marks[0]:
                            samples.append(sample(worker.pid, workers, done))
                            print(f"{done:,} done: {sum(samples[-1]['children_kib']) / 1024:.1f} MiB", flush=True)
                            while marks and done >= marks[0]:
                                marks.pop(0)
                            if any(rss == 0 for rss in samples[-1]["children_kib"]):
                                notes.append(f"a worker process was gone at {done:,} jobs (replaced by the supervisor)")
                                workers = wait_for_children(worker.pid, processes)
                        if worker.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the worker stopped or stalled at {done:,} of {n:,} jobs")
                        time.sleep(POLL_S)
                    seconds = time.monotonic() - first_ack
                except RuntimeError as exc:
                    raise RuntimeError(f"{exc}\n{log_path.read_text()[-3000:]}") from exc
                finally:
                    stop(worker)
            return samples, seconds, notes
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000, help="sample the memory each time this many more are done")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    add_output_argument(parser)
    args = parser.parse_args(argv)
    if not 0 < args.every < args.jobs:
        parser.error("--every must be between 0 and --jobs")
    samples, seconds, notes = measure(args.jobs, args.every, args.processes, args.threads)
    first, last = sum(samples[0]["children_kib"]), sum(samples[-1]["children_kib"])
    growth = last / first - 1
    out = Output(args.out)
    settings = {"jobs": args.jobs, "every": args.every, "processes": args.processes, "threads": args.threads}
    link = out.publish(
        "worker_memory",
        {
            "machine": machine(),
            "settings": settings,
            "samples": samples,
            "growth": growth,
            "target_growth": TARGET_GROWTH,
            "notes": notes,
        },
    )
    notes_text = "".join(f"\nNote: {note}.\n" for note in notes)
    rows = "\n".join(
        f"| {s['done']:,} | {sum(s['children_kib']) / 1024:.1f} | "
        f"{' / '.join(f'{kib / 1024:.1f}' for kib in s['children_kib'])} | {s['supervisor_kib'] / 1024:.1f} |"
        for s in samples
    )
    body = f"""
One `jobrelay worker` ({args.processes} processes x {args.threads} threads, metrics on) drains {args.jobs:,} no-op
jobs preloaded in batches of 1,000 into a fresh private Redis and SQLite job store ({args.jobs / seconds:,.0f}
jobs/s from the first ack to the last). Each time another {args.every:,} jobs are acked the benchmark reads
`VmRSS` from `/proc/PID/status` of each worker process (the supervisor's children, which run the jobs)
and of the supervisor. Machine: {machine()}.

| jobs done | worker processes, MiB (sum) | each process, MiB | supervisor, MiB |
| --- | --- | --- | --- |
{rows}

Growth of the worker processes' memory from {samples[0]["done"]:,} to {samples[-1]["done"]:,} jobs:
**{growth:+.1%}** (target under {TARGET_GROWTH:.0%}: {met(growth < TARGET_GROWTH)}).
{notes_text}
{link}
"""
    out.write_section("Worker memory", body)


if __name__ == "__main__":
    main()

"""Fair sharing between tenants: the wait of one tenant's single job behind another tenant's burst, and
what fair sharing costs a no-op drain.

Every run starts ``jobrelay worker`` (P processes x T threads) on a fresh private Redis and
SQLite store with jobs preloaded:

- *wait*: namespace ``a``'s burst of N no-op jobs, preloaded; once the workers are draining it,
  namespace ``b`` submits one no-op job at a time (``--probes`` of them, one every
  ``--probe-every-s``), each as soon as the previous one started. A probe's wait is from its
  publish to its ``started_at`` in the store (target: p99 under 2 s with fair sharing on). Each
  probe's count of ``a``'s jobs still waiting when it started shows the burst was still there.
  ``--fair off`` measures the same without fair sharing (the probes then wait behind the burst).
- *throughput*: N no-op jobs spread over ``--namespaces`` namespaces, drained with fair sharing
  on and off in alternation (the order swapped every round), jobs/s from the first ack to the last.

    python -m bench.fair_sharing --burst 50000 --probes 50 --jobs 20000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import redis

from bench.procs import kill_tree
from bench.report import Output, add_output_argument, machine, summary
from bench.worker_throughput import QUEUE, acked_pending, drain, noop_job, store_outcome
from shared.broker.publishing import build_broker, publish
from shared.redis_server import RedisServer, free_port
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore

BATCH = 1000
TARGET_P99_S = 2.0


def preload(redis_url: str, database_url: str, namespaces: list[str], n: int, *, fair: bool) -> None:
    """N no-op jobs, the namespaces taking turns, in batches: one insert and one Redis round trip each."""
    engine = create_store_engine(database_url)
    migrate(engine)
    store = JobStore(engine)
    broker = build_broker(redis_url, fair_sharing=fair)
    for start in range(0, n, BATCH):
        batch = [
            replace(noop_job(), namespace=namespaces[(start + i) % len(namespaces)])
            for i in range(min(BATCH, n - start))
        ]
        store.insert(batch)
        store.mark_published(publish(broker, batch))
    broker.close()
    engine.dispose()


def start_workers(tmp: str, redis_url: str, database_url: str, processes: int, threads: int, *, fair: bool) -> tuple[
    subprocess.Popen[bytes], Path
]:  # fmt: skip
    env = {**os.environ, "REDIS_URL": redis_url, "DATA_DIR": tmp, "LOG_LEVEL": "WARNING",
           "DATABASE_URL": database_url, "TASK_MODULES": "bench.noop_tasks",
           "FAIR_SHARING": "on" if fair else "off", "WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}"}  # fmt: skip
    command = [sys.executable, "-m", "services.cli", "worker", "--queues", QUEUE,
               "--processes", str(processes), "--threads", str(threads)]  # fmt: skip
    log_path = Path(tmp) / "workers.log"
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log_path


def probe_waits(args: argparse.Namespace, *, fair: bool) -> list[tuple[float, int]]:
    """Each probe's wait (s) and how many of the burst's jobs still waited when it started."""
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-fair-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        database_url = f"sqlite:///{tmp}/jobs.db"
        try:
            preload(server.url, database_url, ["a"], args.burst, fair=fair)
            client = redis.Redis.from_url(server.url)
            engine = create_store_engine(database_url)
            store = JobStore(engine)
            broker = build_broker(server.url, fair_sharing=fair)
            worker, log_path = start_workers(tmp, server.url, database_url, args.processes, args.threads, fair=fair)
            waits: list[tuple[float, int]] = []
            try:
                deadline = time.monotonic() + 300
                while acked_pending(client) >= args.burst:
                    if worker.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the workers did not start\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.01)
                for _ in range(args.probes):
                    job = replace(noop_job(), namespace="b")
                    store.insert([job])
                    sent_at = time.time()
                    store.mark_published(publish(broker, [job]))
                    deadline = time.monotonic() + args.probe_timeout_s
                    while (started := store.get(job.id).started_at) is None:
                        if worker.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"probe {job.id} did not start within {args.probe_timeout_s}s")
                        time.sleep(0.002)
                    waits.append((max(0.0, started.timestamp() - sent_at), store.count_waiting("a")))
                    time.sleep(args.probe_every_s)
            finally:
                kill_tree(worker)
                broker.close()
                engine.dispose()
                client.close()
            return waits
        finally:
            server.stop()


def drain_rate(args: argparse.Namespace, *, fair: bool) -> float:
    """Jobs per second of one drain of ``--jobs`` no-op jobs spread over ``--namespaces`` namespaces."""
    namespaces = [f"t{i}" for i in range(args.namespaces)]
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-fair-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        database_url = f"sqlite:///{tmp}/jobs.db"
        try:
            preload(server.url, database_url, namespaces, args.jobs, fair=fair)
            client = redis.Redis.from_url(server.url)
            worker, log_path = start_workers(tmp, server.url, database_url, args.processes, args.threads, fair=fair)
            try:
                seconds = drain(
                    partial(acked_pending, client), args.jobs, [worker], timeout_s=900, settle_s=0.0
                ).seconds
                if (counts := store_outcome(database_url)) != {"succeeded": args.jobs}:
                    raise RuntimeError(f"store counts {counts}, not {args.jobs} jobs succeeded once")
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{log_path.read_text()[-3000:]}") from exc
            finally:
                kill_tree(worker)
                client.close()
            return args.jobs / seconds
        finally:
            server.stop()


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=50000, help="namespace a's jobs ahead of the probes")
    parser.add_argument("--probes", type=int, default=50, help="namespace b's single jobs, one after the other")
    parser.add_argument("--probe-every-s", type=float, default=0.2, help="pause between one probe's start and the next")
    parser.add_argument("--probe-timeout-s", type=float, default=600.0)
    parser.add_argument("--fair", choices=("on", "off"), default="on", help="fair sharing in the wait runs")
    parser.add_argument("--jobs", type=int, default=20000, help="no-op jobs per throughput drain")
    parser.add_argument("--namespaces", type=int, default=4, help="namespaces the throughput jobs are spread over")
    parser.add_argument("--runs", type=int, default=3, help="throughput rounds (each: one drain on, one off)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--shared", action="store_true", help="say the machine was busy with other work")
    add_output_argument(parser)
    args = parser.parse_args(argv)

    probes = probe_waits(args, fair=args.fair == "on")
    waits = [wait for wait, _ in probes]
    left = [waiting for _, waiting in probes]
    print(f"wait of b's job behind a's burst (fair sharing {args.fair}): median {statistics.median(waits):.3f} s, "
          f"p99 {p99(waits):.3f} s, max {max(waits):.3f} s; a's jobs waiting meanwhile {min(left)} to {max(left)}",
          flush=True)  # fmt: skip
    on: list[float] = []
    off: list[float] = []
    for run in range(args.runs):
        # NOTE: the order alternates round by round, so a machine that slows the second of two drains
        # in a row books it against both sides alike.
        for fair in (True, False)[:: 1 if run % 2 == 0 else -1]:
            (on if fair else off).append(drain_rate(args, fair=fair))
        print(f"run {run + 1}: fair sharing on {on[-1]:,.0f} vs off {off[-1]:,.0f} jobs/s", flush=True)
    ratios = [a / b for a, b in zip(on, off, strict=True)]

    out = Output(args.out)
    out.assets.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "probe_waits_s": waits,
        "burst_waiting_at_probe_start": left,
        "fair_on_jobs_per_s": on,
        "fair_off_jobs_per_s": off,
        "ratios": ratios,
    }
    out.results_path("fair_sharing").write_text(json.dumps(results, indent=1) + "\n")
    busy = " The machine was shared with other work (tests of other changes) while it ran." if args.shared else ""
    met = "met" if args.fair == "on" and p99(waits) < TARGET_P99_S else "**not met**"
    median_ratio = statistics.median(ratios)
    body = f"""
`python -m bench.fair_sharing --burst {args.burst} --probes {args.probes} --jobs {args.jobs} --runs {args.runs}`:
`jobrelay worker` with {args.processes} processes x {args.threads} threads on a fresh private `redis-server` and
SQLite store per run.{busy} Machine: {machine()}.

| figure | value | target |
| --- | --- | --- |
| wait of namespace b's single job behind a's {args.burst:,} (fair sharing {args.fair}), {args.probes} probes | median {statistics.median(waits):.3f} s, **p99 {p99(waits):.3f} s**, max {max(waits):.3f} s | p99 < {TARGET_P99_S:g} s: {met} |
| a's jobs still waiting when a probe started | {min(left):,} to {max(left):,} | |
| no-op jobs/s over {args.namespaces} namespaces, fair sharing on | {summary(on)} | |
| no-op jobs/s over {args.namespaces} namespaces, fair sharing off | {summary(off)} | |
| ratio on / off (median of run-by-run ratios) | **{median_ratio:.2f}** (range {min(ratios):.2f} to {max(ratios):.2f}) | |

A probe's wait runs from its publish to the `started_at` its worker recorded. With fair sharing on, the
fetch (`shared/broker/bands.py`) gives each namespace waiting on the queue an equal share of what it takes,
so b's job waits for the next fetch and for the jobs a worker had fetched before it, not for a's burst.
"""  # noqa: E501
    out.write_section("Fair sharing: one tenant's job behind another's burst", body)


if __name__ == "__main__":
    main()

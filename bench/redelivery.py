"""Crash redelivery: how soon the jobs a SIGKILLed worker held run again.

Two cases, each repeated on one private Redis and SQLite job store:

``process``: the worker *process* (the supervisor's child, which runs the
jobs) is SIGKILLed. The supervisor sees it exit within 0.2 s, puts its
fetched-but-unacked messages back at the front of the queue, releases its
job leases and starts a new child, which runs them.

``worker``: the whole worker, supervisor and child, is SIGKILLed, as when a
pod or a machine dies. Nothing is left to notice at once: the child's
heartbeat stops, the scheduler leader's orphan requeue (every 2 s) puts its
messages back once the heartbeat is ``WORKER_DEAD_AFTER_S`` old, and a
second worker that was already running picks them up.

Each repeat submits 2 x T ``bench.sleep`` jobs (``--sleep`` seconds) to
workers of one process x T threads and waits until one child holds them
all: T running, T prefetched. It then freezes the victim (SIGSTOP) so that
its ack set in Redis says exactly which jobs it holds, notes the time,
SIGKILLs it, and reads the job rows until every one of those jobs has a
``started_at`` after the kill. The figure is that time for the last of them.

    python -m bench.redelivery --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import dramatiq
import redis
from sqlalchemy import select

from bench.procs import age_s, command_line, kill_hard, kill_tree, wait_for_children
from bench.report import Output, add_output_argument, machine, met
from bench.worker_throughput import QUEUE, noop_job
from services.scheduler.leader import LEADER_KEY
from services.worker.supervisor import CRASH_LOOP_WINDOW_S, restart_delay_s
from shared.broker.orphans import HEARTBEATS
from shared.broker.publishing import NAMESPACE, build_broker, publish
from shared.redis_server import RedisServer, free_port
from shared.settings import Settings
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.models import jobs

TARGET_S = 20.0
WAIT_S = 120.0
LABELS = {
    "process": "worker process killed (supervisor recovers)",
    "worker": "whole worker killed (orphan requeue, other worker)",
}


def until(what: str, ready: Callable[[], bool], timeout_s: float = WAIT_S, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


@dataclass
class Worker:
    """One ``jobrelay worker`` of one process: the supervisor we started and its current child."""

    supervisor: subprocess.Popen[bytes]

    @property
    def child(self) -> int:
        return wait_for_children(self.supervisor.pid, 1)[0]

    @property
    def owner(self) -> str:
        """The child's worker id (its ``--owner``): it names its heartbeat and its ack sets in Redis."""
        args = command_line(self.child)
        return args[args.index("--owner") + 1]


@dataclass
class Cluster:
    """A private Redis and SQLite store, and the processes started against them."""

    tmp: Path
    threads: int
    env: dict[str, str] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, log: IO[bytes]) -> Cluster:
        self.log = log
        self.redis = RedisServer(self.tmp / "redis").start()
        self.client = redis.Redis.from_url(self.redis.url)
        database_url = f"sqlite:///{self.tmp}/jobs.db"
        self.engine = create_store_engine(database_url)
        migrate(self.engine)
        self.store = JobStore(self.engine)
        self.broker = build_broker(self.redis.url)
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": database_url,
            "DATA_DIR": str(self.tmp),
            "LOG_LEVEL": "WARNING",
            "TASK_MODULES": "bench.noop_tasks",
        }
        return self

    def close(self) -> None:
        # NOTE: no graceful stop: the measurements are taken and the Redis and store are thrown away.
        for process in self.started:
            if process.poll() is None:
                kill_tree(process)
        self.engine.dispose()
        self.redis.stop()

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            env={**self.env, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.started.append(process)
        return process

    def start_worker(self) -> Worker:
        """Start a worker of one process; ``wait_consuming`` waits for it."""
        args = ["worker", "--queues", QUEUE, "--processes", "1", "--threads", str(self.threads)]
        return Worker(self.spawn(*args, WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}"))

    def start_scheduler(self) -> subprocess.Popen[bytes]:
        """Start a scheduler; ``wait_leading`` waits for it."""
        return self.spawn("scheduler", SCHEDULER_METRICS_BIND=f"127.0.0.1:{free_port()}")

    def wait_leading(self) -> None:
        until("the scheduler to lead", lambda: bool(self.client.exists(LEADER_KEY)))

    def wait_consuming(self, worker: Worker) -> None:
        owner = worker.owner
        until(f"worker {owner} to beat", lambda: self.client.zscore(HEARTBEATS, owner) is not None)

    def submit(self, n: int, sleep_s: float) -> list[str]:
        # NOTE: the attempt a killed process was inside counts (services/worker/crashes.py): one retry, after
        # the task's 0.05-0.1 s backoff, is what runs the interrupted job again.
        batch = [
            dataclasses.replace(noop_job("bench.sleep", args={"seconds": sleep_s}), max_retries=1) for _ in range(n)
        ]
        self.store.insert(batch)
        self.store.mark_published(publish(self.broker, batch))
        return [job.id for job in batch]

    def held(self, owner: str) -> set[str]:
        """Job ids of the messages ``owner`` fetched and has not acked: running or prefetched."""
        redis_ids = list(self.client.smembers(f"{NAMESPACE}:__acks__.{owner}.{QUEUE}"))
        if not redis_ids:
            return set()
        bodies = self.client.hmget(f"{NAMESPACE}:{QUEUE}.msgs", redis_ids)
        return {dramatiq.Message.decode(body).message_id for body in bodies if isinstance(body, bytes)}

    def rows(self, job_ids: list[str]) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(jobs.c.id, jobs.c.status, jobs.c.started_at, jobs.c.attempts).where(jobs.c.id.in_(job_ids))
                )
            )

    def running(self, job_ids: list[str]) -> int:
        return sum(row.status == "running" for row in self.rows(job_ids))

    def wait_finished(self, job_ids: list[str]) -> None:
        until("the jobs to finish", lambda: all(row.status == "succeeded" for row in self.rows(job_ids)), poll_s=0.1)


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block: what they hold in Redis cannot change while we read it.

    The block kills them; SIGCONT after it only matters if it failed half-way.
    """
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_held(cluster: Cluster, workers: list[Worker], job_ids: list[str]) -> Worker:
    """Wait until the workers hold every job, with a thread on each one they can run; returns the biggest holder."""
    owners = {worker.owner: worker for worker in workers}

    def settled() -> bool:
        held = {owner: cluster.held(owner) & set(job_ids) for owner in owners}
        expected = sum(min(cluster.threads, len(ids)) for ids in held.values())
        return set().union(*held.values()) == set(job_ids) and cluster.running(job_ids) == expected

    until("the jobs to be fetched and started", settled)
    return owners[max(owners, key=lambda owner: len(cluster.held(owner)))]


def restarts(cluster: Cluster, job_ids: set[str], killed_at: datetime) -> dict[str, Any]:
    """Wait until every job in ``job_ids`` has started after ``killed_at``; seconds to the first and the last."""
    ids = sorted(job_ids)
    until(
        "the interrupted jobs to start again",
        lambda: all(row.started_at and row.started_at > killed_at for row in cluster.rows(ids)),
    )
    rows = cluster.rows(ids)
    delays = sorted((row.started_at - killed_at).total_seconds() for row in rows)
    return {
        "interrupted": len(ids),
        "were_running": sum(row.attempts > 1 for row in rows),
        "first_s": delays[0],
        "all_s": delays[-1],
    }


def kill_process(cluster: Cluster, worker: Worker) -> dict[str, Any]:
    """SIGKILL the worker's child; its supervisor stays."""
    child, owner = worker.child, worker.owner
    with frozen([child]):
        interrupted = cluster.held(owner)
        age = age_s(child)
        killed_at = datetime.now(UTC)
        kill_hard(child)
    return {**restarts(cluster, interrupted, killed_at), "process_age_s": round(age, 1)}


def kill_worker(cluster: Cluster, worker: Worker) -> dict[str, Any]:
    """SIGKILL the supervisor and its child together, as a dying pod."""
    child, owner = worker.child, worker.owner
    # NOTE: the supervisor is frozen first: it must not see its child die and recover it.
    with frozen([worker.supervisor.pid, child]):
        interrupted = cluster.held(owner)
        killed_at = datetime.now(UTC)
        kill_hard(child)
        kill_hard(worker.supervisor.pid)
    worker.supervisor.wait()
    return restarts(cluster, interrupted, killed_at)


def process_case(cluster: Cluster, repeats: int, sleep_s: float) -> list[dict[str, Any]]:
    worker = cluster.start_worker()
    cluster.wait_consuming(worker)
    results: list[dict[str, Any]] = []
    young_deaths = 0
    for repeat in range(repeats):
        if restart_delay_s(young_deaths + 1) > 0:
            # Killing another young process would make a crash loop, whose restart the supervisor
            # delays: not the case measured.
            until(
                "the worker process to be past its crash-loop window",
                lambda: age_s(worker.child) > CRASH_LOOP_WINDOW_S + 0.5,
                poll_s=0.1,
            )
        cluster.wait_consuming(worker)
        job_ids = cluster.submit(2 * cluster.threads, sleep_s)
        wait_held(cluster, [worker], job_ids)
        results.append(kill_process(cluster, worker))
        print(f"process killed: {results[-1]}", flush=True)
        young_deaths = young_deaths + 1 if results[-1]["process_age_s"] < CRASH_LOOP_WINDOW_S else 0
        if repeat < repeats - 1:
            cluster.wait_finished(job_ids)
    return results


def worker_case(cluster: Cluster, repeats: int, sleep_s: float) -> list[dict[str, Any]]:
    cluster.start_scheduler()
    workers = [cluster.start_worker(), cluster.start_worker()]
    cluster.wait_leading()
    for worker in workers:
        cluster.wait_consuming(worker)
    results = []
    for repeat in range(repeats):
        job_ids = cluster.submit(2 * cluster.threads, sleep_s)
        victim = wait_held(cluster, workers, job_ids)
        results.append(kill_worker(cluster, victim))
        print(f"worker killed: {results[-1]}", flush=True)
        workers.remove(victim)
        if repeat < repeats - 1:
            # Its replacement (a new pod) comes up after the measurement: it takes no CPU from the recovery.
            workers.append(cluster.start_worker())
            cluster.wait_consuming(workers[-1])
            cluster.wait_finished(job_ids)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="kills per case")
    parser.add_argument("--threads", type=int, default=4, help="threads of each worker process")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds each job sleeps")
    parser.add_argument("--cases", default=",".join(LABELS), help=f"comma-separated, out of {', '.join(LABELS)}")
    add_output_argument(parser)
    args = parser.parse_args(argv)
    cases = {"process": process_case, "worker": worker_case}
    chosen = [case for case in args.cases.split(",") if case]
    if unknown := set(chosen) - set(cases):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for case in chosen:
        with tempfile.TemporaryDirectory(prefix="jobrelay-redelivery-") as tmp, (Path(tmp) / "log").open("wb") as log:
            cluster = Cluster(Path(tmp), args.threads).start(log)
            try:
                scenarios[case] = cases[case](cluster, args.repeats, args.sleep)
            except RuntimeError as exc:
                log.flush()
                raise RuntimeError(f"{case}: {exc}\n{(Path(tmp) / 'log').read_text()[-3000:]}") from exc
            finally:
                cluster.close()
    out = Output(args.out)
    dead_after_s = Settings.from_env().worker_dead_after_s
    settings = {
        "repeats": args.repeats,
        "threads": args.threads,
        "sleep_s": args.sleep,
        "WORKER_DEAD_AFTER_S": dead_after_s,
    }
    link = out.publish(
        "redelivery",
        {"machine": machine(), "settings": settings, "scenarios": scenarios, "labels": LABELS, "target_s": TARGET_S},
    )
    out.write_section("Crash redelivery", describe(args, scenarios, dead_after_s, link))


def describe(
    args: argparse.Namespace, scenarios: dict[str, list[dict[str, Any]]], dead_after_s: float, link: str
) -> str:
    rows = []
    worst = 0.0
    for case, repeats in scenarios.items():
        alls = [r["all_s"] for r in repeats]
        firsts = [r["first_s"] for r in repeats]
        held = statistics.median(r["interrupted"] for r in repeats)
        running = statistics.median(r["were_running"] for r in repeats)
        worst = max(worst, *alls)
        rows.append(
            f"| {LABELS[case]} | {len(repeats)} | {held:.0f} ({running:.0f} running) | "
            f"{statistics.median(firsts):.1f} (max {max(firsts):.1f}) | "
            f"{statistics.median(alls):.1f} (max {max(alls):.1f}) |"
        )
    return f"""
A worker of 1 process x {args.threads} threads holds {2 * args.threads} `bench.sleep` jobs of {args.sleep:g} s
({args.threads} running, {args.threads} prefetched) when it is SIGKILLed; the benchmark freezes it first
(SIGSTOP) and reads its ack set in Redis, so it knows exactly which jobs were interrupted, then waits
until each of those job rows has a `started_at` after the kill. **Worker process killed**: only the
supervisor's child dies; the supervisor requeues its messages at the front of the queue, releases its
leases and starts a new child, which runs them. **Whole worker killed**: supervisor and child die
together (a lost pod); the scheduler leader's orphan requeue (every 2 s) brings the messages back once
the child's heartbeat is `WORKER_DEAD_AFTER_S={dead_after_s:g}` s old, and a second worker, running all
along, starts them. In both cases the replacement has {args.threads} threads for {2 * args.threads} jobs, so the
last of them starts about {args.sleep:g} s after the first: the figure includes that wait.
Private Redis and SQLite job store; kills per case: {args.repeats}. Machine: {machine()}.

| case | kills | jobs interrupted, median | s to the first restart, median | s to the last restart, median |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Target: every interrupted job started again within {TARGET_S:.0f} s of the kill: {met(worst <= TARGET_S)}
(worst case {worst:.1f} s).

{link}
"""


if __name__ == "__main__":
    main()

"""Concurrency and rate limits holding across real worker processes (2 processes x 4 threads), and a crash."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.errors import FieldError
from shared.flow.slots import WAITING_BUCKETS, ConcurrencySlots
from shared.job import Job, JobStatus
from shared.redis_server import free_port
from shared.store.jobs import JobStore
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job
from tests.e2e.supervised_worker import SupervisedWorker, start_worker

#: The crash-recovery bound: a dead worker's slots are free, and their waiters started, within it.
CRASH_BOUND_S = 20.0


@dataclass
class Events:
    """The ``start``/``end`` lines the tasks of ``flow_tasks.py`` append."""

    path: Path

    def read(self) -> list[tuple[str, float, str, int]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            event, at, job_id, pid = line.split()
            rows.append((event, float(at), job_id, int(pid)))
        return rows

    def most_at_once(self, job_ids: set[str] | None = None) -> int:
        """The largest number of jobs between their start and end at any moment (ends before starts on ties)."""
        running = most = 0
        for event, _, _, _ in sorted(
            (row for row in self.read() if job_ids is None or row[2] in job_ids), key=lambda r: (r[1], r[0] == "start")
        ):
            running += 1 if event == "start" else -1
            most = max(most, running)
        return most

    def starts(self) -> dict[str, tuple[float, int]]:
        return {job_id: (at, pid) for event, at, job_id, pid in self.read() if event == "start"}


@dataclass
class FlowWorkers:
    """The supervised worker (``tests/e2e/supervised_worker.py``), with its Redis, metrics and task events."""

    worker: SupervisedWorker
    client: redis.Redis
    metrics_url: str
    events: Events

    @property
    def store(self) -> JobStore:
        return self.worker.store

    @property
    def submitter(self) -> Submitter:
        return self.worker.submitter

    def log(self) -> str:
        return self.worker.log()

    def submit(self, task: str, args: dict, count: int = 1) -> list[Job]:
        jobs = []
        for _ in range(count):
            errors: list[FieldError] = []
            job = build_job({"task": task, "args": args}, "", self.submitter.registry, Submission(), errors)
            assert job is not None, errors
            jobs.append(job)
        return [stored for stored, _ in self.submitter.submit(jobs)]

    def wait(self, job_ids: list[str], until: Callable[[Job], bool], timeout_s: float) -> list[Job]:
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = [self.store.get(job_id) for job_id in job_ids]
            if all(until(job) for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                states = sorted({job.status.value for job in jobs})
                raise AssertionError(f"jobs still {states} after {timeout_s}s:\n{self.log()}")
            time.sleep(0.05)

    def deferred_total(self, task: str, reason: str) -> float:
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        pattern = (
            rf'^jobrelay_jobs_deferred_total\{{[^}}]*reason="{reason}"[^}}]*task="{re.escape(task)}"[^}}]*\}} (\S+)$'
        )
        return sum(float(value) for value in re.findall(pattern, text, flags=re.MULTILINE))


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[FlowWorkers]:
    """``jobrelay worker`` with 2 processes x 4 threads on queue ``flow``, stopped by its own PID."""
    metrics_bind = f"127.0.0.1:{free_port()}"
    worker = start_worker(
        redis_url,
        tmp_path,
        task_modules="tests.services.worker.flow_tasks",
        queues="flow",
        processes=2,
        threads=4,
        extra_env={"WORKER_METRICS_BIND": metrics_bind},
    )
    client = redis.Redis.from_url(redis_url)
    try:
        yield FlowWorkers(worker, client, f"http://{metrics_bind}/metrics", Events(tmp_path / "events.txt"))
    finally:
        worker.stop()
        client.close()


def _ran_once(job: Job) -> bool:
    return job.status is JobStatus.SUCCEEDED and job.attempts == 1 and not job.dead


def test_concurrency_two_holds_across_processes_and_every_job_runs_once(workers: FlowWorkers) -> None:
    # Given: twelve jobs of a task capped at 2, for 8 threads in 2 processes
    jobs = workers.submit("flow.capped", {"record": str(workers.events.path), "run_s": 0.3}, count=12)

    # When: they have all ended
    done = workers.wait([job.id for job in jobs], lambda job: job.status.is_final, timeout_s=90)

    # Then: never more than two at once, yet two at once (the slots are used); none charged, none dead
    assert all(_ran_once(job) for job in done), [(j.status, j.attempts, j.dead) for j in done]
    assert workers.events.most_at_once() == 2
    assert len(workers.events.starts()) == 12
    assert workers.deferred_total("flow.capped", "concurrency") >= 1
    slots = ConcurrencySlots(workers.client, namespace="dramatiq", ttl_s=30)
    assert slots.waiting("flow.capped") == 0
    # The slots a process kept for its next job go back once idle (``slot_pool.py``).
    deadline = time.monotonic() + 10
    while slots.holders("flow.capped"):
        assert time.monotonic() < deadline, slots.holders("flow.capped")
        time.sleep(0.05)


def test_per_key_limits_hold_per_key_and_keys_run_beside_each_other(workers: FlowWorkers) -> None:
    record = str(workers.events.path)
    by_key = {
        key: workers.submit("flow.per_key", {"record": record, "customer_id": key, "run_s": 0.4}, count=3)
        for key in ("a", "b")
    }

    every = [job.id for jobs in by_key.values() for job in jobs]
    done = workers.wait(every, lambda job: job.status.is_final, timeout_s=90)

    assert all(_ran_once(job) for job in done)
    for jobs in by_key.values():
        assert workers.events.most_at_once({job.id for job in jobs}) == 1
    assert workers.events.most_at_once() == 2


def test_a_killed_workers_slot_is_free_within_the_crash_bound_and_the_waiting_job_runs(workers: FlowWorkers) -> None:
    record = str(workers.events.path)
    # Given: a long job holding the only slot, and a second waiting for it
    [long] = workers.submit("flow.single", {"record": record, "run_s": 90})
    deadline = time.monotonic() + 30
    while long.id not in workers.events.starts():
        assert time.monotonic() < deadline, workers.log()
        time.sleep(0.05)
    [short] = workers.submit("flow.single", {"record": record, "run_s": 0.1})
    [waiting] = workers.wait(
        [short.id], lambda job: (job.to_api()["deferred"] or {}).get("reason") == "concurrency", timeout_s=30
    )
    assert waiting.status is JobStatus.QUEUED and waiting.attempts == 0

    # When: the process running the long job is killed -9
    _, pid = workers.events.starts()[long.id]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Then: the waiting job runs within the crash bound, once; the long one's attempt is counted
    [ran] = workers.wait([short.id], lambda job: job.status.is_final, timeout_s=CRASH_BOUND_S + 10)
    assert time.monotonic() - killed_at < CRASH_BOUND_S
    assert _ran_once(ran) and ran.to_api()["deferred"] is None
    [crashed] = workers.wait([long.id], lambda job: job.status.is_final, timeout_s=30)
    assert crashed.status is JobStatus.FAILED and crashed.attempts == 1


def test_a_rate_limit_holds_and_deferred_jobs_show_why_while_they_wait(workers: FlowWorkers) -> None:
    # Given: twenty jobs of a task limited to 5 starts a second
    jobs = workers.submit("flow.rated", {"record": str(workers.events.path)}, count=20)
    ids = [job.id for job in jobs]

    # When: they run, watched while they wait
    seen_deferred: dict | None = None
    deadline = time.monotonic() + 90
    while True:
        rows = [workers.store.get(job_id) for job_id in ids]
        for row in rows:
            shown = row.to_api()
            if seen_deferred is None and shown["deferred"] is not None:
                assert row.status is JobStatus.SCHEDULED
                seen_deferred = shown["deferred"]
        if all(row.status.is_final for row in rows):
            break
        assert time.monotonic() < deadline, workers.log()
        time.sleep(0.02)

    # Then: all ran once, no faster than the limit (an upper bound only, generous), the deferral was shown
    assert all(_ran_once(row) for row in rows)
    starts = sorted(at for at, _ in workers.events.starts().values())
    assert len(starts) == 20
    achieved_per_s = (len(starts) - 1) / (starts[-1] - starts[0])
    assert achieved_per_s <= 5 * 1.25, achieved_per_s
    assert seen_deferred is not None and seen_deferred["reason"] == "rate_limit" and seen_deferred["until"]
    assert workers.deferred_total("flow.rated", "rate_limit") >= 10
    assert not workers.client.exists(WAITING_BUCKETS)


def test_many_short_jobs_over_their_limit_all_run_once(workers: FlowWorkers) -> None:
    """Waiters cycle fast between the waiting list and the queue: none is lost on the way.

    (Once, a refused delivery's late ack deleted its own message, sent back and fetched again
    under the same Redis id meanwhile: the job stayed queued with no message.)
    """
    jobs = workers.submit("flow.capped", {"record": str(workers.events.path), "run_s": 0.005}, count=150)

    done = workers.wait([job.id for job in jobs], lambda job: job.status.is_final, timeout_s=120)

    assert all(_ran_once(job) for job in done), sorted({(j.status.value, j.attempts) for j in done})
    assert workers.events.most_at_once() <= 2

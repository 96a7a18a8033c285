"""Hard limits, liveness and cancels enforced by the supervisor, from outside a task's GIL, on real processes.

The tasks (``tests/e2e/misbehaving.py``) hold their thread in C code, some holding the GIL too,
so no thread of their worker process can interrupt them, beat, or renew a lease meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dramatiq import Message

from services.worker.limits import hard_limit_s
from shared.broker.orphans import requeue_orphans
from shared.job import JobStatus, utcnow
from tests.e2e.supervised_worker import SupervisedWorker, start_worker

TASKS = "tests.e2e.misbehaving"
#: Slack for a busy machine on top of the bounds the issue names (never a speed assertion).
SLACK_S = 2.0


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[SupervisedWorker]:
    # Heartbeats and leases short, so a GIL held for seconds outlasts both
    env = {"WORKER_HEARTBEAT_S": "0.5", "JOB_LEASE_S": "3"}
    run = start_worker(redis_url, tmp_path, task_modules=TASKS, queues="misbehaving", extra_env=env)
    yield run
    run.stop()


def running(job_status: JobStatus) -> bool:
    return job_status is JobStatus.RUNNING


def test_a_gil_holding_task_past_its_hard_limit_is_killed_and_the_job_beside_it_costs_nothing(
    worker: SupervisedWorker, redis_url: str, tmp_path: Path
) -> None:
    # Given a well-behaved job running in the one worker process
    marker = tmp_path / "release"
    beside = worker.submit({"task": "misbehaving.beside", "args": {"path": str(marker)}})
    worker.wait(beside.id, lambda j: running(j.status), 15)
    before = worker.children()
    # When a task holding the GIL in one C loop (1 s soft limit, so 6 s hard) starts beside it
    looping = worker.submit({"task": "misbehaving.gil_loop", "args": {}})
    started = worker.wait(looping.id, lambda j: running(j.status), 15)
    assert started.started_at is not None
    # Then at its hard limit it is failed with the time-limit error (no retries left) and dead-lettered
    limit_s = hard_limit_s(1.0)
    done = worker.wait(looping.id, lambda j: j.status.is_final, limit_s + 15)
    assert done.status is JobStatus.FAILED and done.attempts == 1 and done.dead, worker.log()
    assert done.error == {
        "type": "HardTimeLimitExceeded",
        "message": f"the task ran past its hard time limit of {limit_s:g}s; its worker process was replaced",
        "retryable": True,
    }
    assert done.finished_at is not None
    assert (done.finished_at - started.started_at).total_seconds() < limit_s + 1 + SLACK_S, worker.log()
    # And its process was replaced
    worker.wait_children(lambda pids: len(pids) == 1 and not set(pids) & set(before), 15)
    # And the job beside it runs again in the new process, its attempt not counted, and finishes
    worker.wait(beside.id, lambda j: running(j.status) and j.lease_owner is not None, 15)
    marker.touch()
    finished = worker.wait(beside.id, lambda j: j.status.is_final, 15)
    assert (finished.status, finished.attempts, finished.result) == (JobStatus.SUCCEEDED, 1, "done")
    # And the killed job never runs again: its message is a dead letter, in no queue
    client = redis.Redis.from_url(redis_url)
    assert {Message.decode(m).message_id for m in client.hvals("dramatiq:misbehaving.dead.msgs")} == {looping.id}
    assert worker.store.get(looping.id).attempts == 1
    assert "killing worker process" in worker.log()


def test_a_live_child_holding_the_gil_longer_than_the_dead_after_time_is_never_taken_for_dead(
    worker: SupervisedWorker, redis_url: str
) -> None:
    # Given a task holding the GIL for 5 s: its process's heartbeat thread cannot beat meanwhile
    job = worker.submit({"task": "misbehaving.gil_sleep", "args": {"seconds": 5}})
    worker.wait(job.id, lambda j: running(j.status), 15)
    client = redis.Redis.from_url(redis_url)
    # When the orphan requeue runs again and again (dead after 1.5 s of silence), leases 3 s long
    moved = 0
    expired = []
    while not (row := worker.store.get(job.id)).status.is_final:
        moved += requeue_orphans(client, worker.store, dead_after_s=1.5)
        if row.status is JobStatus.RUNNING and row.lease_expires_at is not None and row.lease_expires_at < utcnow():
            expired.append(row.lease_expires_at)
        time.sleep(0.25)
    # Then the supervisor's beats kept it alive and its lease renewed: it ran once, to its end
    done = worker.store.get(job.id)
    assert (moved, expired) == (0, []), worker.log()
    assert (done.status, done.attempts, done.result) == (JobStatus.SUCCEEDED, 1, "woke"), worker.log()


def test_cancel_of_jobs_blocked_in_c_escalates_to_a_kill_within_three_seconds(
    worker: SupervisedWorker, tmp_path: Path
) -> None:
    # Given two jobs in one process: one in a C sleep that ignores async exceptions, one holding the GIL
    # (started second: holding the GIL, it would keep the other from reaching its C call)
    inside = tmp_path / "in-c"
    in_c = worker.submit({"task": "misbehaving.c_sleep", "args": {"seconds": 60, "started": str(inside)}})
    deadline = time.monotonic() + 15
    while not inside.exists():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.02)
    holding = worker.submit({"task": "misbehaving.gil_sleep", "args": {"seconds": 60}})
    for job in (in_c, holding):
        worker.wait(job.id, lambda j: running(j.status), 15)
    before = worker.children()
    # When an operator cancels both
    asked = time.monotonic()
    for job in (in_c, holding):
        worker.store.cancel(job.id)
    # Then both are cancelled within 3 s of the request (the grace is 2 s): their process was killed
    for job in (in_c, holding):
        done = worker.wait(job.id, lambda j: j.status.is_final, 3 + 15)
        assert done.status is JobStatus.CANCELLED and done.attempts == 1, worker.log()
    took_s = time.monotonic() - asked
    assert took_s < 3.0 + SLACK_S, (took_s, worker.log())
    # And a new process serves the queue
    worker.wait_children(lambda pids: len(pids) == 1 and not set(pids) & set(before), 15)
    marker = tmp_path / "go"
    marker.touch()
    after = worker.submit({"task": "misbehaving.beside", "args": {"path": str(marker)}})
    assert worker.wait(after.id, lambda j: j.status.is_final, 15).status is JobStatus.SUCCEEDED

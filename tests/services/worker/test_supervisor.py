"""`jobrelay worker` as real processes: cancellation, hard time limits, SIGTERM, crashes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dramatiq import Message

from services.worker.supervisor import MAX_RESTART_DELAY_S, restart_delay_s
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.orphans import HEARTBEATS, requeue_orphans
from shared.broker.publishing import NAMESPACE
from shared.job import Job, JobStatus
from tests.e2e.supervised_worker import SupervisedWorker, start_worker

#: Longest a job beside a crashing one may wait: one worker process's restart (on a loaded machine).
RESTART_BOUND_S = 8.0


#: The supervised worker of these tests (``tests/e2e/supervised_worker.py``).
WorkerRun = SupervisedWorker


@pytest.fixture
def worker_run(redis_url: str, tmp_path: Path) -> Iterator[WorkerRun]:
    run = start_worker(
        redis_url, tmp_path, task_modules="tests.services.worker.tasks_for_tests", queues="default,testing"
    )
    try:
        yield run
    finally:
        run.stop()


def test_cancelling_a_running_job_interrupts_it_within_two_seconds(worker_run: WorkerRun) -> None:
    job = worker_run.submit({"task": "diagnostics.sleep", "args": {"seconds": 30}})
    worker_run.wait(job.id, lambda j: j.status is JobStatus.RUNNING, 10)
    # When the job is cancelled while it runs
    worker_run.store.cancel(job.id)
    asked = time.monotonic()
    # Then it ends cancelled within two seconds, and the worker keeps serving
    done = worker_run.wait(job.id, lambda j: j.status.is_final, 5)
    assert done.status is JobStatus.CANCELLED and time.monotonic() - asked < 2.0
    echo = worker_run.submit({"task": "diagnostics.echo", "args": {"message": "after"}})
    assert worker_run.wait(echo.id, lambda j: j.status.is_final, 5).result == "after"


def test_hard_time_limit_replaces_the_process_and_records_the_job(worker_run: WorkerRun) -> None:
    # Given a task stuck in one C call, past its 1 s soft limit
    before = worker_run.children()
    job = worker_run.submit({"task": "testing.block", "args": {"seconds": 60}})
    # Then within the hard limit (1 s + 5 s grace) the job is failed and the process replaced
    done = worker_run.wait(job.id, lambda j: j.status.is_final, 15)
    assert done.status is JobStatus.FAILED and done.error and done.error["type"] == "HardTimeLimitExceeded"
    deadline = time.monotonic() + 10
    while not (worker_run.children() and not set(worker_run.children()) & set(before)):
        assert time.monotonic() < deadline, worker_run.log()
        time.sleep(0.05)
    # And the worker keeps serving
    echo = worker_run.submit({"task": "diagnostics.echo", "args": {"message": "alive"}})
    assert worker_run.wait(echo.id, lambda j: j.status.is_final, 10).result == "alive"


def test_a_task_that_kills_its_process_is_dead_lettered_after_its_retries_and_slows_no_neighbour(
    worker_run: WorkerRun, redis_url: str
) -> None:
    # Given a task that aborts its worker process on every attempt (max_retries=2)
    crasher = worker_run.submit({"task": "testing.abort", "args": {}})
    # When it crashes its process again and again, with neighbours submitted alongside all along
    # (with retries: one running in the other thread at a crash has its attempt counted too)
    neighbours: list[Job] = []
    deadline = time.monotonic() + 60
    while not worker_run.store.get(crasher.id).status.is_final:
        assert time.monotonic() < deadline, worker_run.log()
        body = {"task": "diagnostics.echo", "args": {"message": "beside"}, "max_retries": 3}
        neighbours.append(worker_run.submit(body))
        time.sleep(0.5)
    # Then its third crash ended it: failed and dead-lettered, the signal named
    done = worker_run.store.get(crasher.id)
    assert done.status is JobStatus.FAILED and done.dead and done.attempts == 3, worker_run.log()
    assert done.error == {"type": "WorkerCrashed", "message": "worker process died: SIGABRT", "retryable": True}
    client = redis.Redis.from_url(redis_url)
    # (the supervisor records the row, then moves the message: the dead letter follows the row by moments)
    dead_letters = dead_letter_keys(NAMESPACE, "testing")[1]
    deadline = time.monotonic() + 10
    while not client.hexists(dead_letters, crasher.id):
        assert time.monotonic() < deadline, worker_run.log()
        time.sleep(0.05)
    assert [Message.decode(data).message_id for data in client.hvals(dead_letters)] == [crasher.id]
    for name in ("testing", "testing.DQ"):
        assert crasher.id not in {Message.decode(data).message_id for data in client.hvals(f"dramatiq:{name}.msgs")}
    # And every neighbour finished, none later than one process restart after it was submitted
    waits = []
    for neighbour in neighbours:
        finished = worker_run.wait(neighbour.id, lambda j: j.status.is_final, 15)
        assert finished.status is JobStatus.SUCCEEDED and finished.finished_at is not None
        waits.append((finished.finished_at - finished.created_at).total_seconds())
    assert max(waits) < RESTART_BOUND_S, (waits, worker_run.log())


def test_sigterm_finishes_in_flight_work_and_requeues_the_rest(worker_run: WorkerRun, redis_url: str) -> None:
    # Given one job running and more waiting than the threads can take
    running = worker_run.submit({"task": "diagnostics.sleep", "args": {"seconds": 1.5}})
    worker_run.wait(running.id, lambda j: j.status is JobStatus.RUNNING, 10)
    waiting = [worker_run.submit({"task": "diagnostics.sleep", "args": {"seconds": 3}}) for _ in range(6)]
    time.sleep(0.3)
    # When the worker gets SIGTERM
    worker_run.process.send_signal(signal.SIGTERM)
    assert worker_run.process.wait(timeout=30) == 0
    # Then the in-flight job finished, and nothing is left claimed or lost
    assert worker_run.store.get(running.id).status is JobStatus.SUCCEEDED
    client = redis.Redis.from_url(redis_url)
    unfinished = [j for j in waiting if not worker_run.store.get(j.id).status.is_final]
    assert unfinished, "the test needs jobs left waiting"
    queued = {m.decode() for m in client.lrange("dramatiq:default", 0, -1)}
    assert len(queued) == len(unfinished)
    assert all(client.scard(key) == 0 for key in client.keys("dramatiq:__acks__.*"))
    for job in unfinished:
        assert worker_run.store.get(job.id).status is JobStatus.QUEUED


def test_whole_worker_killed_is_recovered_by_the_orphan_requeue(worker_run: WorkerRun, redis_url: str) -> None:
    # Given a job running in a worker whose supervisor and children all die at once (a pod killed)
    job = worker_run.submit({"task": "diagnostics.sleep", "args": {"seconds": 2}})
    worker_run.wait(job.id, lambda j: j.status is JobStatus.RUNNING, 10)
    children = worker_run.children()
    worker_run.process.send_signal(signal.SIGKILL)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    worker_run.process.wait(timeout=5)
    client = redis.Redis.from_url(redis_url)
    # When its heartbeat is older than the dead-after time, the housekeeping requeues its messages
    assert requeue_orphans(client, worker_run.store, dead_after_s=60) == 0  # not dead yet: nothing moves
    time.sleep(1.0)
    moved = requeue_orphans(client, worker_run.store, dead_after_s=0.5)
    # Then the message is back at the front of its queue and the job is claimable
    assert moved == 1
    assert client.lindex("dramatiq:default", 0) is not None
    assert worker_run.store.get(job.id).lease_expires_at is not None
    assert client.zcard(HEARTBEATS) == 0


def test_a_long_job_never_makes_its_live_worker_look_dead(worker_run: WorkerRun, redis_url: str) -> None:
    # Given a job running far longer than the dead-after time used below
    job = worker_run.submit({"task": "diagnostics.sleep", "args": {"seconds": 4}})
    worker_run.wait(job.id, lambda j: j.status is JobStatus.RUNNING, 10)
    client = redis.Redis.from_url(redis_url)
    # When the orphan requeue runs again and again while it runs (dead after 1.5 s of silence)
    moved = 0
    while not worker_run.store.get(job.id).status.is_final:
        moved += requeue_orphans(client, worker_run.store, dead_after_s=1.5)
        time.sleep(0.25)
    # Then nothing was requeued: the heartbeat thread kept beating, and the job ran once
    done = worker_run.store.get(job.id)
    assert moved == 0 and done.status is JobStatus.SUCCEEDED and done.attempts == 1


def test_a_slot_restarts_at_once_after_one_young_death_and_backs_off_after_more() -> None:
    assert restart_delay_s(0) == 0.0
    assert restart_delay_s(1) == 0.0
    assert [restart_delay_s(n) for n in range(2, 6)] == [1.0, 2.0, 4.0, 8.0]
    assert restart_delay_s(50) == MAX_RESTART_DELAY_S

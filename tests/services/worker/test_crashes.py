"""A dead worker process's jobs, put right by the supervisor: each kind of job it held, on a real store and Redis."""

from __future__ import annotations

import threading
from pathlib import Path

import redis
from dramatiq import Message

from services.worker.crashes import CrashRecovery, died_of
from services.worker.held_jobs import HeldJobs, held_jobs_path
from services.worker.limits import KILL_CANCEL, KILL_TIME_LIMIT, Kill
from shared.broker.publishing import build_broker, message_for
from shared.job import Job, JobStatus, utcnow
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.shared.store.test_jobs import make_job

OWNER = "host-0-dead"
ACKS = f"dramatiq:__acks__.{OWNER}.default"


def fetched(client: redis.Redis, store: JobStore, **overrides: object) -> Job:
    """A job claimed by ``OWNER``, its message in ``OWNER``'s ack set (fetched, not acked)."""
    job = make_job(**overrides)
    store.insert([job])
    assert store.claim(job.id, owner=OWNER, lease_s=30).job is not None
    message = message_for(job)
    redis_id = f"r-{job.id}"
    body = message.copy(options={**message.options, "redis_message_id": redis_id}).encode()
    client.hset("dramatiq:default.msgs", redis_id, body)
    client.sadd(ACKS, redis_id)
    return job


def messages(client: redis.Redis, name: str) -> set[str]:
    return {Message.decode(data).message_id for data in client.hvals(f"dramatiq:{name}.msgs")}


def retry_sent(client: redis.Redis, job_id: str) -> bool:
    """One message of ``job_id`` left: its retry's, on the delay queue, or already due in the queue.

    NOTE: the backoff is full jitter from 0 s: a retry due before it is published goes to the queue.
    """
    bodies = client.hvals("dramatiq:default.DQ.msgs") + client.hvals("dramatiq:default.msgs")
    return [Message.decode(body).message_id for body in bodies].count(job_id) == 1


def queued(client: redis.Redis) -> set[str]:
    """The jobs whose message waits in the default queue's list."""
    ids = {raw.decode() for raw in client.lrange("dramatiq:default", 0, -1)}
    bodies = [client.hget("dramatiq:default.msgs", redis_id) for redis_id in ids]
    return {Message.decode(body).message_id for body in bodies if body is not None}


def mark_running(held: HeldJobs, job_ids: list[str]) -> threading.Event:
    """Each job entered by a thread of its own, which never leaves it (its process dies).

    The threads wait on the returned event: a thread's record is its own while it lives.
    """
    release = threading.Event()
    for job_id in job_ids:
        entered = threading.Event()

        def run(job_id: str = job_id, entered: threading.Event = entered) -> None:
            held.enter(make_job(id=job_id))
            entered.set()
            release.wait(30)

        threading.Thread(target=run, daemon=True).start()
        assert entered.wait(10)
    return release


def recovery(redis_client: redis.Redis, redis_url: str, store: JobStore, tmp_path: Path) -> CrashRecovery:
    return CrashRecovery(
        redis_client, store, TaskRegistry(store.engine, cache_s=0), build_broker(redis_url), data_dir=tmp_path
    )


def test_a_crash_counts_the_attempts_it_ended_and_gives_back_the_claims_ahead(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a worker process holding a job of each kind: three its threads were inside (one with
    # retries left, one on its last attempt, one an operator cancelled), one claimed ahead, and
    # one whose attempt had ended with its commit still pending
    retried = fetched(redis_client, store)
    last = fetched(redis_client, store, max_retries=0)
    cancelled = fetched(redis_client, store)
    store.cancel(cancelled.id)
    ahead = fetched(redis_client, store)
    ended = fetched(redis_client, store)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    held.ahead([ahead.id, retried.id])
    threads = mark_running(held, [retried.id, last.id, cancelled.id])
    crashes = recovery(redis_client, redis_url, store, tmp_path)

    # When the process dies of SIGSEGV and the supervisor recovers it
    lost = crashes.settle(OWNER, cause=died_of(-11))
    crashes.requeue(OWNER, lost)
    threads.set()

    # Then the attempts it died under are recorded by their retry policy, with the signal named
    error = {"type": "WorkerCrashed", "message": "worker process died: SIGSEGV", "retryable": True}
    row = store.get(retried.id)
    assert (row.status, row.attempts, row.error, row.lease_owner) == (JobStatus.RETRYING, 1, error, None)
    assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()
    row = store.get(last.id)
    assert (row.status, row.attempts, row.error, row.dead) == (JobStatus.FAILED, 1, error, True)
    assert store.get(cancelled.id).status is JobStatus.CANCELLED
    # And the claim ahead is given back uncounted; the ended attempt's lease is released
    row = store.get(ahead.id)
    assert (row.status, row.attempts, row.lease_owner) == (JobStatus.QUEUED, 0, None)
    row = store.get(ended.id)
    assert row.status is JobStatus.RUNNING and row.attempts == 1
    assert row.lease_expires_at is not None and row.lease_expires_at <= utcnow()
    # And in Redis: the retry waits on the delay queue, its old message gone; the failure is a
    # dead letter; the cancelled job has no message; the other two are back in the queue
    assert messages(redis_client, "default.DQ") <= {retried.id} and retry_sent(redis_client, retried.id)
    assert messages(redis_client, "default.dead") == {last.id}
    assert messages(redis_client, "default") - {retried.id} == queued(redis_client) - {retried.id}
    assert queued(redis_client) - {retried.id} == {ahead.id, ended.id}
    assert redis_client.exists(ACKS) == 0
    assert not held_jobs_path(tmp_path, OWNER).exists()


def test_a_process_stopped_on_purpose_counts_nothing(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a process inside one job with one claimed ahead, stopped (SIGTERM past its grace, or
    # the hard time limit, whose watchdog recorded its own job)
    running = fetched(redis_client, store)
    ahead = fetched(redis_client, store)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    held.ahead([ahead.id])
    threads = mark_running(held, [running.id])
    crashes = recovery(redis_client, redis_url, store, tmp_path)
    # When it is recovered
    crashes.requeue(OWNER, crashes.settle(OWNER, cause=None))
    threads.set()
    # Then the running job goes back with its lease released, the claim ahead uncounted
    row = store.get(running.id)
    assert row.status is JobStatus.RUNNING and row.error is None
    assert row.lease_expires_at is not None and row.lease_expires_at <= utcnow()
    assert store.get(ahead.id).attempts == 0
    assert queued(redis_client) == {running.id, ahead.id}


def test_a_process_that_kept_no_file_is_recovered_as_before(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a process that could not keep its file (a full disk), dead of SIGKILL
    job = fetched(redis_client, store)
    crashes = recovery(redis_client, redis_url, store, tmp_path)
    # When it is recovered
    crashes.requeue(OWNER, crashes.settle(OWNER, cause=died_of(-9)))
    # Then nothing is counted: its lease is released and its message back in the queue
    row = store.get(job.id)
    assert row.status is JobStatus.RUNNING and row.error is None and row.attempts == 1
    assert queued(redis_client) == {job.id}


def test_what_a_process_died_of() -> None:
    assert died_of(-11) == "SIGSEGV"
    assert died_of(-6) == "SIGABRT"
    assert died_of(-9) == "SIGKILL"
    assert died_of(3) == "exit code 3"
    assert died_of(-99) == "signal 99"


def test_a_process_killed_for_a_hard_limit_counts_that_job_alone(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a process inside three jobs: one past its hard limit (no retries left), one past it
    # with retries left, one running beside them; and one claimed ahead
    late = fetched(redis_client, store, max_retries=0)
    retried = fetched(redis_client, store)
    beside = fetched(redis_client, store)
    ahead = fetched(redis_client, store)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    held.ahead([ahead.id])
    threads = mark_running(held, [late.id, retried.id, beside.id])
    crashes = recovery(redis_client, redis_url, store, tmp_path)
    # When its supervisor killed it for the two late ones and recovers it
    kill = Kill(KILL_TIME_LIMIT, frozenset({late.id, retried.id}), 8.0)
    crashes.requeue(OWNER, crashes.settle(OWNER, cause=None, kill=kill))
    threads.set()
    # Then the late ones are recorded by their retry policy with the time-limit error
    message = "the task ran past its hard time limit of 8s; its worker process was replaced"
    error = {"type": "HardTimeLimitExceeded", "message": message, "retryable": True}
    row = store.get(late.id)
    assert (row.status, row.attempts, row.error, row.dead) == (JobStatus.FAILED, 1, error, True)
    row = store.get(retried.id)
    assert (row.status, row.attempts, row.error) == (JobStatus.RETRYING, 1, error)
    # And the one beside them goes back uncounted, as the claim ahead does: both queued, attempt 0
    for job in (beside, ahead):
        row = store.get(job.id)
        assert (row.status, row.attempts, row.lease_owner, row.error) == (JobStatus.QUEUED, 0, None, None)
    assert messages(redis_client, "default.dead") == {late.id}
    assert messages(redis_client, "default.DQ") <= {retried.id} and retry_sent(redis_client, retried.id)
    assert queued(redis_client) - {retried.id} == {beside.id, ahead.id}


def test_a_process_killed_for_a_cancel_past_its_grace_records_it_cancelled(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a process inside a job an operator cancelled, still running, and one beside it
    stuck = fetched(redis_client, store)
    store.cancel(stuck.id)
    beside = fetched(redis_client, store)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    threads = mark_running(held, [stuck.id, beside.id])
    crashes = recovery(redis_client, redis_url, store, tmp_path)
    # When its supervisor killed it past the cancel grace
    crashes.requeue(OWNER, crashes.settle(OWNER, cause=None, kill=Kill(KILL_CANCEL, frozenset({stuck.id}))))
    threads.set()
    # Then the job is cancelled, its message gone; the one beside it is back, uncounted
    row = store.get(stuck.id)
    assert row.status is JobStatus.CANCELLED and row.error is not None and row.error["type"] == "Cancelled"
    assert stuck.id not in messages(redis_client, "default")
    assert (store.get(beside.id).status, store.get(beside.id).attempts) == (JobStatus.QUEUED, 0)
    assert queued(redis_client) == {beside.id}


def test_a_job_failed_for_good_by_its_lost_process_submits_its_on_failure_callback(
    redis_client: redis.Redis, redis_url: str, store: JobStore, registry: TaskRegistry, tmp_path: Path
) -> None:
    # Given a task with an on_failure callback, and a job of it with no retries left in a process
    from shared.catalog import TaskSpec

    mourner_schema = {
        "type": "object",
        "properties": {"job_id": {"type": "string"}, "error": {"type": "object"}},
        "required": ["job_id", "error"],
        "additionalProperties": False,
    }
    registry.register(
        [
            TaskSpec(name="crash.victim", args_schema={"type": "object"}, on_failure="crash.mourner"),
            TaskSpec(name="crash.mourner", args_schema=mourner_schema),
        ],
        registered_by="tests",
    )
    late = fetched(redis_client, store, task="crash.victim", args={}, max_retries=0)
    held = HeldJobs(held_jobs_path(tmp_path, OWNER))
    threads = mark_running(held, [late.id])
    crashes = recovery(redis_client, redis_url, store, tmp_path)
    # When its supervisor killed it past its hard limit and recovers it
    kill = Kill(KILL_TIME_LIMIT, frozenset({late.id}), 8.0)
    crashes.requeue(OWNER, crashes.settle(OWNER, cause=None, kill=kill))
    threads.set()
    # Then the job failed for good, and its callback job was written in that commit (its outbox entry
    # left for the relay to publish)
    row = store.get(late.id)
    assert row.status is JobStatus.FAILED and row.callback_job_id is not None and row.callback_error is None
    callback = store.get(row.callback_job_id)
    message = "the task ran past its hard time limit of 8s; its worker process was replaced"
    assert callback.task == "crash.mourner" and callback.status is JobStatus.QUEUED
    assert callback.args == {
        "job_id": late.id,
        "error": {"type": "HardTimeLimitExceeded", "message": message, "retryable": True},
    }
    assert [job.id for _, jobs in store.outbox_left(older_than=utcnow()) for job in jobs] == [callback.id]

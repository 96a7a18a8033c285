"""A wired worker (claims, metrics, results, outcomes, workflows, acker) on a real Redis and store."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

import tests.services.worker.tasks_for_tests  # noqa: F401 - registers the testing.* tasks
from shared.broker.publishing import message_for
from shared.catalog import Catalog
from shared.ids import new_id
from shared.job import JobStatus
from shared.results import build_result_storage
from shared.settings import Settings
from shared.store.attempts import ClaimOutcome
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, running_harness
from tests.services.worker.redis_faults import Faults, dispatch


def test_echo_runs_to_succeeded_with_its_result(harness: Harness) -> None:
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "hi"}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == "hi"
    assert done.attempts == 1 and done.started_at and done.finished_at and done.lease_owner is None


def test_failure_is_retried_with_backoff_then_succeeds(harness: Harness) -> None:
    job = harness.submit({"task": "diagnostics.fail", "args": {"succeed_on_attempt": 3}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.attempts == 3 and done.result == {"succeeded_on_attempt": 3}


def test_failure_for_good_is_recorded_and_dead_lettered(harness: Harness, redis_client: redis.Redis) -> None:
    job = harness.submit({"task": "diagnostics.fail", "args": {}, "max_retries": 1})
    done = harness.wait(job.id)
    assert done.status is JobStatus.FAILED and done.attempts == 2
    assert done.error and done.error["type"] == "DiagnosticFailure" and "attempt 2" in done.error["message"]
    dead = [json.loads(v) for v in redis_client.hgetall("dramatiq:default.dead.msgs").values()]
    assert [m["message_id"] for m in dead] == [job.id]


def test_duplicate_delivery_of_a_finished_job_is_skipped(harness: Harness) -> None:
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "once"}})
    first = harness.wait(job.id)
    # When the same message arrives again (a relay or crash-recovery duplicate)
    harness.broker.enqueue(message_for(job))
    harness.broker.join("default", timeout=5000)
    again = harness.store.get(job.id)
    assert again.attempts == 1 and again.finished_at == first.finished_at


def test_progress_is_visible_while_running(harness: Harness) -> None:
    # NOTE: 2.5 s (10 steps), so the wait sees the job between its first progress report and its end
    # even on a busy machine.
    job = harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 2.5}})
    running = harness.wait(job.id, until=lambda j: j.progress is not None and j.progress["current"] >= 1)
    assert running.status is JobStatus.RUNNING and running.progress["total"] == 10
    done = harness.wait(job.id)
    assert done.progress == {"current": 10, "total": 10, "message": "done"}


def test_soft_time_limit_fails_the_job(harness: Harness) -> None:
    job = harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 5}, "time_limit_s": 0.3})
    done = harness.wait(job.id)
    assert done.status is JobStatus.FAILED and done.error and done.error["type"] == "TimeLimitExceeded"


def test_large_result_goes_to_result_storage(harness: Harness, worker_settings: Settings) -> None:
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "x" * 5000}})
    done = harness.wait(job.id)
    assert done.result is None and done.result_url == f"/v1/jobs/{job.id}/result"
    body, content_type = build_result_storage(worker_settings.effective_result_storage_url).open(job.id)
    assert json.loads(body) == "x" * 5000 and content_type == "application/json"


def test_cancelled_queued_job_never_runs(harness: Harness) -> None:
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "no"}, "delay_s": 0.5})
    harness.store.cancel(job.id)
    harness.broker.join("default", timeout=5000)
    final = harness.store.get(job.id)
    assert final.status is JobStatus.CANCELLED and final.attempts == 0 and final.result is None


def test_cancelled_retrying_job_never_runs_again(harness: Harness) -> None:
    # Given a job waiting for its retry
    job = harness.submit({"task": "testing.retry_later", "args": {"after_s": 1.5}})
    harness.wait(job.id, until=lambda j: j.status is JobStatus.RETRYING)
    # When it is cancelled before the retry is due
    harness.store.cancel(job.id)
    harness.broker.join("default", timeout=10_000)
    # Then the retry message is skipped: one attempt only, and the job stays cancelled
    final = harness.store.get(job.id)
    assert final.status is JobStatus.CANCELLED and final.attempts == 1


def test_a_message_for_an_unknown_task_fails_its_job_with_a_clear_error(harness: Harness) -> None:
    # Given a job whose message names a task no worker has (a task renamed since it was queued)
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "x"}})
    harness.wait(job.id)
    ghost = dataclasses.replace(job, id=new_id(), task="renamed.away")
    harness.store.insert([ghost])
    harness.broker.enqueue(message_for(ghost))
    # Then the job fails for good, dead-lettered, naming the problem, and the worker goes on
    done = harness.wait(ghost.id)
    assert done.status is JobStatus.FAILED and done.dead and done.error
    assert done.error["type"] == "ActorNotFound" and "renamed.away" in done.error["message"]
    again = harness.submit({"task": "diagnostics.echo", "args": {"message": "still here"}})
    assert harness.wait(again.id).result == "still here"


def seen_short_jobs(harness: Harness) -> None:
    """Make the worker's running average of job durations short, as after many quick jobs."""
    for _ in range(200):
        harness.claims.reservations.observe(0.001)


def test_a_job_claimed_ahead_and_cancelled_before_it_starts_never_runs(harness: Harness) -> None:
    # Given a worker that has seen short jobs (so it claims a round ahead), both threads busy and,
    # behind them, a job claimed ahead (it shows running, unstarted)
    # NOTE: the threads stay busy until the test frees them (sleepers of a minute, cancelled at the end):
    # sleepers that ended on their own (they slept 1.5 s) let a thread start the job before the cancel
    # reached it when the machine was slow, the flake this test had.
    seen_short_jobs(harness)
    sleepers = [harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 60}}) for _ in range(2)]
    for sleeper in sleepers:
        harness.wait(sleeper.id, until=lambda j: j.status is JobStatus.RUNNING)
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "never"}})
    harness.wait(job.id, until=lambda j: j.status is JobStatus.RUNNING)
    assert job.id in harness.claims.reservations.job_ids()
    # When an operator cancels it
    harness.store.cancel(job.id)
    # Then it is recorded cancelled before any thread starts it
    final = harness.wait(job.id)
    assert final.status is JobStatus.CANCELLED and final.result is None
    assert final.error and final.error["message"] == "cancelled before it started"
    # And once the threads are free (their sleepers cancelled), it still never runs
    for sleeper in sleepers:
        harness.store.cancel(sleeper.id)
    for sleeper in sleepers:
        assert harness.wait(sleeper.id).status is JobStatus.CANCELLED
    harness.broker.join("default", timeout=10_000)
    never = harness.store.get(job.id)
    assert never.status is JobStatus.CANCELLED and never.result is None and never.attempts <= 1


def test_a_stopping_worker_gives_back_the_jobs_it_claimed_ahead(harness: Harness, redis_client: redis.Redis) -> None:
    # Given a worker that has seen short jobs, both threads busy and jobs claimed ahead behind them
    seen_short_jobs(harness)
    sleepers = [harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 1.0}}) for _ in range(2)]
    for sleeper in sleepers:
        harness.wait(sleeper.id, until=lambda j: j.status is JobStatus.RUNNING)
    waiting = [harness.submit({"task": "diagnostics.echo", "args": {"message": str(n)}}) for n in range(2)]
    for job in waiting:
        harness.wait(job.id, until=lambda j: j.status is JobStatus.RUNNING)
    # When the worker stops (SIGTERM): running jobs finish, the rest go back to the queue
    harness.worker.stop(timeout=10_000)
    # Then the unstarted jobs are queued again with no attempt counted, their messages back in Redis
    for sleeper in sleepers:
        assert harness.store.get(sleeper.id).status is JobStatus.SUCCEEDED
    for job in waiting:
        back = harness.store.get(job.id)
        assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.lease_owner is None
    queued = {message_id.decode() for message_id in redis_client.lrange("dramatiq:default", 0, -1)}
    stored = redis_client.hgetall("dramatiq:default.msgs")
    assert {json.loads(stored[m.encode()])["message_id"] for m in queued} == {job.id for job in waiting}


def test_a_job_this_worker_claimed_without_knowing_is_run_not_skipped(harness: Harness) -> None:
    # Given a job whose claim by this worker committed but whose answer was lost (a commit that
    # raised after writing, a claim retried), so the row is running under this worker's lease
    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "mine"}, "delay_s": 60})
    assert harness.store.claim(job.id, owner=harness.claims.owner, lease_s=30).outcome is ClaimOutcome.CLAIMED
    # When its message arrives
    harness.broker.enqueue(message_for(job))
    # Then the worker runs it once, as the attempt it already counted, instead of skipping it as a duplicate
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == "mine" and done.attempts == 1


def test_a_duplicate_delivery_skipped_while_the_job_runs_leaves_the_running_attempt_alone(
    harness: Harness, tmp_path: Path
) -> None:
    # Given a job running on one thread (Redis lost its message, so the relay published it again)
    release = tmp_path / "release"
    job = harness.submit({"task": "testing.wait_for_file", "args": {"path": str(release)}})
    harness.wait(job.id, until=lambda j: j.status is JobStatus.RUNNING)
    skipped = ("jobrelay_jobs_duplicates_skipped_total", {"task": job.task, "queue": job.queue})
    before = REGISTRY.get_sample_value(*skipped) or 0.0
    # When the second delivery reaches the other thread and is skipped as a duplicate
    harness.broker.enqueue(message_for(job))
    deadline = time.monotonic() + 10
    while (REGISTRY.get_sample_value(*skipped) or 0.0) <= before:
        assert time.monotonic() < deadline, "the second delivery was never skipped"
        time.sleep(0.02)
    # Then the first attempt still ends with its outcome recorded (the skip used to drop its entry,
    # so its end found nothing to record and the row stayed running for good)
    release.touch()
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == "released" and done.attempts == 1


@pytest.mark.parametrize("error", [redis.ConnectionError, redis.TimeoutError])
def test_a_retry_whose_publish_redis_refuses_is_sent_once_redis_answers(
    worker_settings: Settings, catalog: Catalog, store: JobStore, registry: TaskRegistry, error: type[Exception]
) -> None:
    # Given a worker whose Redis refuses the publish of a retry's message twice
    faults = Faults()
    rule = faults.fail(dispatch("enqueue", "default.DQ"), error=error, times=2)
    client = faults.client(worker_settings.require_redis_url("tests"))
    with running_harness(worker_settings, catalog, store, registry, client=client) as harness:
        # When a job fails its first attempt
        job = harness.submit({"task": "diagnostics.fail", "args": {"succeed_on_attempt": 2}})
        # Then its retry goes out once Redis answers, and the job succeeds on its second attempt
        done = harness.wait(job.id, timeout_s=20)
        assert rule.hits == 2
        assert done.status is JobStatus.SUCCEEDED and done.attempts == 2


def test_an_ack_redis_refuses_is_sent_again_and_the_job_not_run_twice(
    worker_settings: Settings, catalog: Catalog, store: JobStore, registry: TaskRegistry, redis_client: redis.Redis
) -> None:
    # Given a worker whose Redis refuses its next batch of acks (the script that acks many)
    faults = Faults()
    rule = faults.fail(lambda text: text[0].upper() in ("EVALSHA", "EVAL", "SCRIPT") and "__acks__" in " ".join(text))
    client = faults.client(worker_settings.require_redis_url("tests"))
    with running_harness(worker_settings, catalog, store, registry, client=client) as harness:
        # When a job succeeds
        job = harness.submit({"task": "diagnostics.echo", "args": {"message": "acked"}})
        done = harness.wait(job.id)
        # Then its message is acked once Redis answers (nothing left in the ack set or the queue)
        deadline = time.monotonic() + 10
        while redis_client.hlen("dramatiq:default.msgs"):
            assert time.monotonic() < deadline, "the message was never acked"
            time.sleep(0.02)
        assert rule.hits == 1
        assert done.status is JobStatus.SUCCEEDED and harness.store.get(job.id).attempts == 1


@pytest.mark.parametrize(
    ("kind", "result"),
    [("datetime", {"at": "2026-12-04T18:30:00+00:00"}), ("decimal", "12.50"), ("huge", 2**64 + 1)],
)
def test_results_of_common_python_types_are_stored_as_json(harness: Harness, kind: str, result: object) -> None:
    job = harness.submit({"task": "testing.returns", "args": {"kind": kind}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == result and done.attempts == 1


def test_bytes_become_a_result_file(harness: Harness, worker_settings: Settings) -> None:
    job = harness.submit({"task": "testing.returns", "args": {"kind": "bytes"}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result_url == f"/v1/jobs/{job.id}/result"
    storage = build_result_storage(worker_settings.effective_result_storage_url)
    assert storage.open(job.id) == (b"\x00\x01binary", "application/octet-stream")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("object", "result is not JSON: object at /items/1"),
        ("nan", "result is not JSON: float nan at /"),
        ("surrogate", "result is not JSON: text with a lone surrogate at /"),
    ],
)
def test_a_result_with_no_json_form_fails_its_job_at_once_and_the_worker_serves_the_next(
    harness: Harness, kind: str, message: str
) -> None:
    # Given a task (with retries left) returning a value that has no JSON form
    bad = harness.submit({"task": "testing.returns", "args": {"kind": kind}})
    # When it ends, then its job failed for good with the type and place named
    failed = harness.wait(bad.id)
    assert failed.status is JobStatus.FAILED and failed.attempts == 1, failed
    assert failed.error and failed.error["message"].startswith(message) and failed.error["retryable"] is False
    # And the worker goes on serving: a job submitted after it succeeds
    after = harness.submit({"task": "diagnostics.echo", "args": {"message": "next"}})
    assert harness.wait(after.id, timeout_s=5).status is JobStatus.SUCCEEDED


def test_an_exception_whose_str_raises_is_recorded_readably(harness: Harness) -> None:
    job = harness.submit({"task": "testing.returns", "args": {"kind": "unprintable"}, "max_retries": 0})
    done = harness.wait(job.id)
    assert done.status is JobStatus.FAILED and done.error
    assert done.error["type"] == "_Unprintable" and done.error["message"] == "_Unprintable"
    assert "_Unprintable" in done.error["traceback"]


# -- async def tasks: run on the process's event loop, recorded as sync tasks are ----------


def test_an_async_task_awaiting_returns_its_result_with_its_job_in_context(harness: Harness) -> None:
    job = harness.submit({"task": "testing.async_sleep", "args": {"seconds": 0.2}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.attempts == 1
    assert done.result == {"slept_s": 0.2, "job_id": job.id}


def test_an_async_task_reports_progress(harness: Harness) -> None:
    job = harness.submit({"task": "testing.async_sleep", "args": {"seconds": 2.0, "steps": 4}})
    running = harness.wait(job.id, until=lambda j: j.progress is not None)
    assert running.status is JobStatus.RUNNING and running.progress["total"] == 4
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.progress == {"current": 4, "total": 4, "message": "awaited"}


def test_an_async_task_is_cancelled_at_its_soft_time_limit(harness: Harness, tmp_path: Path) -> None:
    # Given an async task awaiting far longer than its time limit
    marker = tmp_path / "cancelled"
    body = {"task": "testing.async_sleep", "args": {"seconds": 30, "marker": str(marker)}, "time_limit_s": 0.5}
    job = harness.submit(body)
    # Then it fails at the limit as a sync task does, its coroutine cancelled (not left running)
    done = harness.wait(job.id)
    assert done.status is JobStatus.FAILED and done.error and done.error["type"] == "TimeLimitExceeded"
    assert done.error["message"] == "the task exceeded its time limit"
    assert done.started_at and done.finished_at
    assert (done.finished_at - done.started_at).total_seconds() < 0.5 + 1.0
    assert marker.exists()
    # And the admin's traceback shows where the coroutine was awaiting
    assert "in async_sleep" in done.error["traceback"]


def test_an_async_task_cancelled_while_awaiting_is_recorded_cancelled(harness: Harness, tmp_path: Path) -> None:
    # Given an async task awaiting
    marker = tmp_path / "cancelled"
    job = harness.submit({"task": "testing.async_sleep", "args": {"seconds": 30, "marker": str(marker)}})
    harness.wait(job.id, until=lambda j: j.status is JobStatus.RUNNING)
    # When an operator cancels it
    cancelled_s = time.monotonic()
    harness.store.cancel(job.id)
    # Then its coroutine is cancelled and the job recorded cancelled within about a second
    done = harness.wait(job.id, timeout_s=5)
    assert time.monotonic() - cancelled_s < 1.5
    assert done.status is JobStatus.CANCELLED and done.error
    assert done.error["message"] == "cancelled while running" and done.result is None
    assert marker.exists()


def test_a_sync_task_reporting_progress_and_an_async_task_awaiting_share_a_process(harness: Harness) -> None:
    # Given a sync task running on one thread, reporting progress
    sync = harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 2.5}})
    harness.wait(sync.id, until=lambda j: j.status is JobStatus.RUNNING)
    # When an async task awaits beside it
    awaiting = harness.submit({"task": "testing.async_sleep", "args": {"seconds": 0.6, "steps": 2}})
    # Then both succeed, the async one within the sync one's run, each with its own progress
    async_done, sync_done = harness.wait(awaiting.id), harness.wait(sync.id)
    assert async_done.status is JobStatus.SUCCEEDED and sync_done.status is JobStatus.SUCCEEDED
    assert async_done.started_at and async_done.finished_at and sync_done.started_at and sync_done.finished_at
    assert sync_done.started_at < async_done.started_at and async_done.finished_at < sync_done.finished_at
    assert async_done.progress == {"current": 2, "total": 2, "message": "awaited"}
    assert sync_done.progress == {"current": 10, "total": 10, "message": "done"}


def test_an_async_task_writes_a_result_file_from_a_thread(harness: Harness, worker_settings: Settings) -> None:
    job = harness.submit({"task": "testing.async_file", "args": {"lines": ["a", "b"]}})
    done = harness.wait(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == 2 and done.result_url == f"/v1/jobs/{job.id}/result"
    storage = build_result_storage(worker_settings.effective_result_storage_url)
    assert storage.open(job.id) == (b"a\nb\n", "text/plain")

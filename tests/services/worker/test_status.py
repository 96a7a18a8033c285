"""The status middleware driving real Dramatiq workers against a real Redis and store."""

from __future__ import annotations

import dataclasses
import json

import redis

import tests.services.worker.tasks_for_tests  # noqa: F401 - registers the testing.* tasks
from shared.broker import message_for
from shared.ids import new_id
from shared.job import JobStatus
from shared.results import build_result_storage
from shared.settings import Settings
from tests.services.worker.conftest import Harness


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
    dead = [json.loads(v) for v in redis_client.hgetall("dramatiq:default.XQ.msgs").values()]
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
    job = harness.submit({"task": "diagnostics.sleep", "args": {"seconds": 1.0}})
    running = harness.wait(job.id, until=lambda j: j.progress is not None and j.progress["current"] >= 1)
    assert running.status is JobStatus.RUNNING and running.progress["total"] == 4
    done = harness.wait(job.id)
    assert done.progress == {"current": 4, "total": 4, "message": "done"}


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

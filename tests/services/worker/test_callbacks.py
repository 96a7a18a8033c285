"""on_success / on_failure callbacks in an in-process worker on a real Redis and store.

The callback is a new job submitted in the outcome's commit: on success, on a failure for good
(after the last retry, or at once when not retryable), never per retry; its task unknown, the job's
outcome stands and its view says why no callback was submitted.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from services.worker.retry_policy import Retry
from shared.catalog import Catalog
from shared.job import JobStatus
from shared.settings import Settings
from shared.store.jobs import JobFilter, JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import running_harness


class Refused(Exception):
    pass


def callback_catalog() -> Catalog:
    catalog = Catalog()

    @catalog.task(name="cb.record", max_retries=0, time_limit_s=10)
    def record(job_id: str, result: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"job_id": job_id, "result": result, "error": error}

    @catalog.task(name="cb.works", time_limit_s=10, on_success="cb.record", on_failure="cb.record")
    def works(value: int) -> dict[str, int]:
        return {"doubled": value * 2}

    @catalog.task(
        name="cb.flaky",
        max_retries=2,
        time_limit_s=10,
        min_backoff_s=0.01,
        max_backoff_s=0.02,
        on_success="cb.record",
        on_failure="cb.record",
    )
    def flaky() -> None:
        raise RuntimeError("always down")

    @catalog.task(name="cb.refused", max_retries=3, time_limit_s=10, non_retryable=[Refused], on_failure="cb.record")
    def refused() -> None:
        raise Refused("bad input, no retry mends it")

    @catalog.task(name="cb.orphan", time_limit_s=10, on_success="cb.nobody")
    def orphan() -> str:
        return "fine"

    @catalog.task(name="cb.retry_then_ok", max_retries=2, time_limit_s=10, on_success="cb.record")
    def retry_then_ok(marker: str) -> str:
        from jobrelay import current_job

        job = current_job()
        if job is not None and job.attempt == 1:
            raise Retry(after_s=0.01)
        return marker

    return catalog


@pytest.fixture
def catalog_and_registry(registry: TaskRegistry) -> tuple[Catalog, TaskRegistry]:
    catalog = callback_catalog()
    registry.register(catalog.specs(), registered_by="tests")
    return catalog, registry


def test_success_and_failure_for_good_each_submit_one_callback_job(
    worker_settings: Settings,
    store: JobStore,
    catalog_and_registry: tuple[Catalog, TaskRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog, registry = catalog_and_registry
    caplog.set_level(logging.WARNING)
    with running_harness(worker_settings, catalog, store, registry) as harness:
        # Given: jobs that succeed, fail after retries, fail at once, succeed after a retry
        ok = harness.submit({"task": "cb.works", "args": {"value": 21}})
        flaky = harness.submit({"task": "cb.flaky", "args": {}})
        refused = harness.submit({"task": "cb.refused", "args": {}})
        later = harness.submit({"task": "cb.retry_then_ok", "args": {"marker": "second time"}})
        finished = {job.id: harness.wait(job.id) for job in (ok, flaky, refused, later)}
        callbacks = {job_id: harness.wait(job.callback_job_id or "") for job_id, job in finished.items()}

    # Then: each outcome links one callback job, which ran with the job's result or its error
    assert finished[ok.id].status is JobStatus.SUCCEEDED
    assert callbacks[ok.id].task == "cb.record"
    assert callbacks[ok.id].args == {"job_id": ok.id, "result": {"doubled": 42}}
    assert callbacks[ok.id].status is JobStatus.SUCCEEDED
    assert callbacks[ok.id].result == {"job_id": ok.id, "result": {"doubled": 42}, "error": None}

    # A failure for good: after its last retry, with the error the API shows (no traceback)
    assert finished[flaky.id].status is JobStatus.FAILED and finished[flaky.id].attempts == 3
    assert callbacks[flaky.id].args == {
        "job_id": flaky.id,
        "error": {"type": "RuntimeError", "message": "always down", "retryable": True},
    }
    # Each attempt is in the job's history, written by the worker with its finish
    history = store.attempt_history(flaky.id)
    assert [(a["attempt"], a["outcome"]) for a in history] == [(1, "retrying"), (2, "retrying"), (3, "failed")]
    assert all(a["worker"] and a["started_at"] <= a["finished_at"] for a in history)
    assert [a["outcome"] for a in store.attempt_history(later.id)] == ["retrying", "succeeded"]
    # A non-retryable failure: at once
    assert finished[refused.id].attempts == 1
    assert callbacks[refused.id].args["error"]["type"] == "Refused"
    assert callbacks[refused.id].args["error"]["retryable"] is False
    # A retried success: one callback, for the success
    assert finished[later.id].attempts == 2
    assert callbacks[later.id].args == {"job_id": later.id, "result": "second time"}
    # Never per retry: exactly the four callback jobs exist
    assert len(store.page(JobFilter(task="cb.record"), limit=100).items) == 4


def test_a_callback_naming_an_unknown_task_is_warned_at_start_and_explained_on_the_job(
    worker_settings: Settings,
    store: JobStore,
    catalog_and_registry: tuple[Catalog, TaskRegistry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog, registry = catalog_and_registry
    caplog.set_level(logging.WARNING)
    with running_harness(worker_settings, catalog, store, registry) as harness:
        # Then: the worker warned when it started
        assert "task cb.orphan names callback task 'cb.nobody', which no worker has registered" in caplog.text
        # When: the job succeeds and its callback falls due
        job = harness.wait(harness.submit({"task": "cb.orphan", "args": {}}).id)

    # Then: its outcome stands, and its view says why no callback was submitted
    assert job.status is JobStatus.SUCCEEDED and job.result == "fine"
    assert job.callback_job_id is None
    assert (
        job.callback_error
        == "callback 'cb.nobody' not submitted: /task no worker has registered a task named 'cb.nobody'"
    )
    view = job.to_api()
    assert view["callback_error"] == job.callback_error and view["callback_job_id"] is None


def test_a_cancelled_job_submits_no_callback(
    worker_settings: Settings, store: JobStore, catalog_and_registry: tuple[Catalog, TaskRegistry]
) -> None:
    catalog, registry = catalog_and_registry
    with running_harness(worker_settings, catalog, store, registry) as harness:
        job = harness.submit({"task": "cb.works", "args": {"value": 1}, "delay_s": 60})
        store.cancel(job.id)
        cancelled = harness.wait(job.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.callback_job_id is None


def test_a_job_dead_lettered_without_running_submits_its_on_failure_callback(
    worker_settings: Settings, store: JobStore, registry: TaskRegistry
) -> None:
    # Given: a task another worker registered, with an on_failure callback, that this worker lacks
    here = callback_catalog()
    elsewhere = Catalog()

    @elsewhere.task(name="cb.elsewhere", time_limit_s=10, on_failure="cb.record")
    def elsewhere_only() -> None:
        raise AssertionError("never runs on this worker")

    registry.register([*here.specs(), *elsewhere.specs()], registered_by="tests")
    with running_harness(worker_settings, here, store, registry) as harness:
        # When: its job reaches this worker, which dead-letters the message (fail_undelivered)
        job = harness.submit({"task": "cb.elsewhere", "args": {}})
        failed = harness.wait(job.id)
        callback = harness.wait(failed.callback_job_id or "")

    # Then: the job failed for good without running, and its callback ran with the error it shows
    assert failed.status is JobStatus.FAILED and failed.dead and failed.attempts <= 1
    assert failed.error is not None and failed.error["type"] == "ActorNotFound"
    assert callback.task == "cb.record" and callback.status is JobStatus.SUCCEEDED
    assert callback.args == {"job_id": job.id, "error": failed.error}

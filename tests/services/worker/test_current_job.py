"""``jobrelay.current_job()``: the running job as its task sees it, and None outside a task."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from jobrelay import current_job
from shared.catalog import Catalog
from shared.job import JobStatus
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import running_harness


def test_outside_a_task_there_is_no_current_job() -> None:
    assert current_job() is None


def test_a_task_sees_its_job_and_logs_with_its_fields(
    worker_settings: Settings,
    store: JobStore,
    registry: TaskRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given: a task that fails once, then reports what current_job() showed it
    seen: list[dict[str, Any]] = []
    catalog = Catalog()

    @catalog.task(name="testing.who_am_i", max_retries=2, time_limit_s=30, min_backoff_s=0.01, max_backoff_s=0.02)
    def who_am_i() -> str:
        job = current_job()
        assert job is not None
        job.logger.info("running attempt %d", job.attempt)
        seen.append(
            {
                "id": job.id,
                "task": job.task,
                "queue": job.queue,
                "attempt": job.attempt,
                "max_retries": job.max_retries,
                "deadline": job.deadline,
                "workflow_id": job.workflow_id,
            }
        )
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "done"

    registry.register(catalog.specs(), registered_by="tests")
    caplog.set_level(logging.INFO, logger="jobrelay.task")

    # When: it runs in the worker
    with running_harness(worker_settings, catalog, store, registry) as harness:
        submitted = harness.submit({"task": "testing.who_am_i", "args": {}})
        finished = harness.wait(submitted.id)

    # Then: each attempt saw its own job, numbered from 1, with the deadline of its time limit
    assert finished.status is JobStatus.SUCCEEDED
    assert [entry["attempt"] for entry in seen] == [1, 2]
    for entry in seen:
        assert entry["id"] == submitted.id
        assert (entry["task"], entry["queue"], entry["max_retries"], entry["workflow_id"]) == (
            "testing.who_am_i",
            "default",
            2,
            None,
        )
        assert entry["deadline"] is not None
    assert finished.started_at is not None
    span_s = (seen[-1]["deadline"] - finished.started_at).total_seconds()
    assert 25 <= span_s <= 31
    # And: its logger's lines carry the job's fields
    lines = [record for record in caplog.records if record.name == "jobrelay.task.testing.who_am_i"]
    assert [(line.getMessage(), line.job_id, line.attempt) for line in lines] == [  # type: ignore[attr-defined]
        ("running attempt 1", submitted.id, 1),
        ("running attempt 2", submitted.id, 2),
    ]

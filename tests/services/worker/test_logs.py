"""What a worker logs for a job, in both formats: one WARNING line per retried attempt, one ERROR with traceback,
a DEBUG line per success and, at INFO, a line counting the successes."""

from __future__ import annotations

import json

import pytest

from shared.catalog import Catalog
from shared.job import JobStatus
from shared.logs import configure_logging
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.conftest import Harness, running_harness


def lines_of(err: str, job_id: str) -> list[dict]:
    parsed = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in parsed if line.get("job_id") == job_id or job_id in line["message"]]


def test_retried_attempts_warn_in_one_line_and_the_final_failure_errors_once(
    harness: Harness, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    # Given: JSON lines to this test's stderr
    configure_logging("worker", "INFO", json_lines=True)

    # When: a job fails all four of its attempts
    job = harness.submit({"task": "diagnostics.fail", "args": {}, "max_retries": 3})
    assert harness.wait(job.id).attempts == 4

    # Then: three WARNING lines without traceback, one ERROR with it, and nothing from Dramatiq's own handler
    err = capsys.readouterr().err
    lines = lines_of(err, job.id)
    warnings = [line for line in lines if line["level"] == "warning"]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(warnings) == 3 and not any("exc" in line for line in warnings), warnings
    assert len(errors) == 1 and "DiagnosticFailure" in errors[0]["exc"], errors
    assert "Failed to process message" not in err
    assert err.count("Traceback") == 1
    assert all(line["job_id"] == job.id for line in lines)


def test_text_lines_carry_the_job_id(
    harness: Harness, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("worker", "DEBUG", json_lines=False)

    job = harness.submit({"task": "diagnostics.echo", "args": {"message": "hi"}})
    harness.wait(job.id)

    [succeeded] = [line for line in capsys.readouterr().err.splitlines() if "job succeeded" in line]
    assert f"job_id={job.id}" in succeeded and "DEBUG" in succeeded


def test_at_info_the_successes_are_counted_by_task_not_logged_one_by_one(
    worker_settings: Settings,
    catalog: Catalog,
    store: JobStore,
    registry: TaskRegistry,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    # Given: JSON lines at the default level
    configure_logging("worker", "INFO", json_lines=True)
    # When: three jobs succeed, and the worker stops
    with running_harness(worker_settings, catalog, store, registry) as harness:
        jobs = [harness.submit({"task": "diagnostics.echo", "args": {"message": f"hi {n}"}}) for n in range(3)]
        for job in jobs:
            assert harness.wait(job.id).status is JobStatus.SUCCEEDED
    # Then: no line per success; the summary lines (one, unless 10 s passed) count all three, by task
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["message"].startswith("job succeeded")]
    summaries = [line for line in lines if "job(s) succeeded in the last" in line["message"]]
    assert summaries and all(line["level"] == "info" and "job_id" not in line for line in summaries)
    assert sum(int(line["message"].split()[0]) for line in summaries) == 3
    assert all("(diagnostics.echo " in line["message"] for line in summaries)

"""``jobrelay.testing.run``: one job through the worker's path in this process, on a virtual clock."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobrelay import ApiInvalidRequest, current_job, report_progress, resources, task
from jobrelay.testing import run


@task(name="testing_mode.double", max_retries=0, time_limit_s=10)
def double(value: int) -> dict[str, int]:
    """Double a number, reporting progress."""
    report_progress(1, 1, "doubled")
    return {"doubled": value * 2}


@task(name="testing_mode.flaky_once", max_retries=2, time_limit_s=10, min_backoff_s=30, max_backoff_s=60)
def flaky_once() -> int:
    """Fail on the first attempt, succeed on the second."""
    job = current_job()
    assert job is not None
    if job.attempt == 1:
        raise ConnectionError("first attempt fails")
    return job.attempt


@task(name="testing_mode.uses_db", max_retries=0, time_limit_s=10)
def uses_db() -> str:
    """Read the database resource."""
    return str(resources()["db"].query())


@task(name="testing_mode.slow", max_retries=0, time_limit_s=0.3)
def slow() -> None:
    """Run past its time limit."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_job_runs_through_the_worker_path_and_comes_back_as_the_api_shows_it() -> None:
    job = run(double, {"value": 21})

    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["result"] == {"doubled": 42}
    assert job["progress"] == {"current": 1, "total": 1, "message": "doubled"}
    assert job["task"] == "testing_mode.double" and job["error"] is None


def test_bad_args_raise_with_the_api_message_naming_the_field() -> None:
    with pytest.raises(ApiInvalidRequest) as raised:
        run("testing_mode.double", {"value": "many"})
    assert "/args/value" in str(raised.value)


def test_a_backoff_is_waited_on_a_virtual_clock() -> None:
    started = time.monotonic()
    job = run(flaky_once)
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["result"] == 2
    assert time.monotonic() - started < 25  # the 30 s backoff was not waited


def test_given_resources_replace_the_lifespans() -> None:
    class FakeDb:
        def query(self) -> Any:
            return "fake rows"

    assert run(uses_db, resources={"db": FakeDb()})["result"] == "fake rows"


def test_the_time_limit_holds() -> None:
    job = run(slow)
    assert job["status"] == "failed"
    assert job["error"]["message"] == "the task exceeded its time limit"

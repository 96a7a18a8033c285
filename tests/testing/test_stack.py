"""The ``jobrelay_stack`` fixture (pytest11 plugin): submit, job, drain, advance and client in one process."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from jobrelay import ApiInvalidRequest, JobrelayClient, task
from services.testing.stack import JobrelayStack


@task(name="testing_mode.add", max_retries=0, time_limit_s=10, on_success="testing_mode.note")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@task(name="testing_mode.note", max_retries=0, time_limit_s=10)
def note(job_id: str, result: Any = None, error: dict[str, Any] | None = None) -> str:
    """Record a callback."""
    return f"{job_id} gave {result}"


def test_the_fixture_comes_from_the_installed_plugin(jobrelay_stack: JobrelayStack) -> None:
    assert isinstance(jobrelay_stack, JobrelayStack)
    assert isinstance(jobrelay_stack.client, JobrelayClient)


def test_submit_drain_and_job_run_the_job_and_its_callback(jobrelay_stack: JobrelayStack) -> None:
    job_id = jobrelay_stack.submit(add, {"a": 2, "b": 3})
    assert jobrelay_stack.job(job_id)["status"] == "queued"

    assert jobrelay_stack.drain() == 2  # the job, then its callback

    view = jobrelay_stack.job(job_id)
    assert view["status"] == "succeeded" and view["result"] == 5
    callback = jobrelay_stack.job(view["callback_job_id"])
    assert callback["result"] == f"{job_id} gave 5"


def test_a_delayed_job_waits_for_the_virtual_clock(jobrelay_stack: JobrelayStack) -> None:
    job_id = jobrelay_stack.submit("testing_mode.add", {"a": 1, "b": 1}, delay_s=3600)
    assert jobrelay_stack.drain() == 0
    jobrelay_stack.advance(3599)
    assert jobrelay_stack.drain() == 0
    jobrelay_stack.advance(1)
    assert jobrelay_stack.drain() == 2
    assert jobrelay_stack.job(job_id)["result"] == 2


def test_a_bad_request_raises_the_api_message(jobrelay_stack: JobrelayStack) -> None:
    with pytest.raises(ApiInvalidRequest, match="/args/b"):
        jobrelay_stack.submit(add, {"a": 1})
    with pytest.raises(ApiInvalidRequest, match=r"no worker has registered a task named 'nobody\.here'"):
        jobrelay_stack.client.submit("nobody.here", {})


def test_the_client_cancels_a_queued_job(jobrelay_stack: JobrelayStack) -> None:
    job_id = jobrelay_stack.submit(add, {"a": 1, "b": 2})
    assert jobrelay_stack.client.cancel(job_id)["status"] == "cancelled"
    assert jobrelay_stack.drain() == 1  # the message is consumed and skipped
    assert jobrelay_stack.job(job_id)["status"] == "cancelled"


def test_a_schedule_ticks_on_the_virtual_clock(jobrelay_stack: JobrelayStack) -> None:
    # Given: a schedule every minute, made through the API
    body = {"id": "every-minute", "task": "testing_mode.add", "args": {"a": 2, "b": 2}, "interval_s": 60}
    created = jobrelay_stack.client._call("POST", "/v1/schedules", body=body)
    # NOTE: interval ticks fall on multiples of 60 s since the epoch, so the first one may be a moment
    # away (the clock is real time plus what advance() added): step to halfway between two ticks, 30 s
    # from either, a margin no busy machine eats. Stepping past the first tick runs it first.
    first_tick = datetime.fromisoformat(created["next_run_at"])
    lead_s = (first_tick - jobrelay_stack.clock.now()).total_seconds()
    jobrelay_stack.advance((lead_s - 30) % 60)
    ran_before = jobrelay_stack.drain()
    assert ran_before == (2 if lead_s < 30 else 0)
    jobrelay_stack.advance(1)
    assert jobrelay_stack.drain() == 0

    # When: the clock passes its next tick
    jobrelay_stack.advance(60)

    # Then: one job of the schedule runs (and its callback)
    assert jobrelay_stack.drain() == 2
    fired = jobrelay_stack.client.list(schedule_id="every-minute")["items"]
    assert [(job["status"], job["result"]) for job in fired] == [("succeeded", 4)] * (1 + ran_before // 2)


@task(name="testing_mode.rated", max_retries=0, time_limit_s=10, rate_limit="2/m")
def rated(n: int) -> int:
    """At most two starts a minute."""
    return n


@task(name="testing_mode.single", max_retries=0, time_limit_s=10, concurrency=1)
def single(n: int) -> int:
    """One at a time."""
    return n


def test_a_rate_limit_defers_jobs_on_the_virtual_clock(jobrelay_stack: JobrelayStack) -> None:
    # Given: three jobs of a task limited to two starts a minute (one token every 30 s)
    ids = [jobrelay_stack.submit(rated, {"n": n}) for n in range(3)]
    # When: they are drained
    jobrelay_stack.drain()
    # Then: the first runs, the others are scheduled for their reserved tokens, 30 s apart
    views = [jobrelay_stack.job(job_id) for job_id in ids]
    assert [view["status"] for view in views] == ["succeeded", "scheduled", "scheduled"]
    assert [view["deferred"]["reason"] for view in views[1:]] == ["rate_limit", "rate_limit"]
    second, third = (datetime.fromisoformat(view["deferred"]["until"]) for view in views[1:])
    assert 29.9 <= (third - second).total_seconds() <= 30.1
    # And each runs once the clock passes its token, not before
    jobrelay_stack.advance(30)
    jobrelay_stack.drain()
    assert [jobrelay_stack.job(job_id)["status"] for job_id in ids] == ["succeeded", "succeeded", "scheduled"]
    jobrelay_stack.advance(30)
    jobrelay_stack.drain()
    assert [jobrelay_stack.job(job_id)["result"] for job_id in ids] == [0, 1, 2]


def test_a_concurrency_limit_gives_each_jobs_slot_back(jobrelay_stack: JobrelayStack) -> None:
    # Given: three jobs of a task that runs one at a time
    ids = [jobrelay_stack.submit(single, {"n": n}) for n in range(3)]
    # When: they are drained, one after the other
    assert jobrelay_stack.drain() == 3
    # Then: each took the one slot and gave it back, so all ran, none deferred
    views = [jobrelay_stack.job(job_id) for job_id in ids]
    assert [(view["status"], view["deferred"]) for view in views] == [("succeeded", None)] * 3

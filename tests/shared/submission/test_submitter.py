"""The Submitter's path for a schedule's tick: the job built from the schedule, submitted once, left to the relay
while Redis is away."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from dramatiq import Message

from shared.broker.publishing import build_broker
from shared.errors import InvalidInput
from shared.job import Job, JobStatus, utcnow
from shared.redis_server import free_port
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import build_scheduled_job

#: The id the scheduler would derive from a tick (``services/scheduler/ticks.py``): the same for every replica.
TICK_JOB_ID = "018fd3e2-b000-7abc-8def-0123456789ab"


def tick_job(registry: TaskRegistry, **overrides: object) -> Job:
    values: dict[str, object] = {
        "job_id": TICK_JOB_ID,
        "schedule_id": "nightly",
        "task": "diagnostics.echo",
        "args": {"message": "hi"},
    }
    values.update(overrides)
    return build_scheduled_job(registry, **values)  # type: ignore[arg-type]


def messages_of(redis_client: redis.Redis, queue: str = "default") -> list[str]:
    return sorted(Message.decode(data).message_id for data in redis_client.hvals(f"dramatiq:{queue}.msgs"))


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``check`` holds within ``timeout_s`` (the sent entries are deleted by a background thread)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_tick_job_takes_its_task_defaults_and_the_id_it_is_given(registry: TaskRegistry) -> None:
    spec = registry.get("diagnostics.echo")
    assert spec is not None
    job = tick_job(registry)
    assert (job.id, job.schedule_id, job.task, job.queue) == (TICK_JOB_ID, "nightly", spec.name, spec.queue)
    assert job.status is JobStatus.QUEUED and job.args == {"message": "hi"} and job.published_at is None
    assert (job.max_retries, job.priority, job.time_limit_s, job.max_age_s) == (
        spec.max_retries,
        spec.priority,
        spec.time_limit_s,
        spec.max_age_s,
    )


def test_a_tick_of_an_unknown_task_or_with_args_that_no_longer_fit_is_refused_saying_why(
    registry: TaskRegistry,
) -> None:
    with pytest.raises(InvalidInput) as unknown:
        tick_job(registry, task="gone.away")
    assert unknown.value.detail == "task 'gone.away' is not registered by any worker"
    with pytest.raises(InvalidInput) as refused:
        tick_job(registry, args={"message": 3})
    assert [error.path for error in refused.value.errors] == ["/args/message"]
    assert refused.value.detail.startswith("/args/message: ")


def test_a_tick_submitted_twice_is_one_row_and_one_message(
    store: JobStore, registry: TaskRegistry, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given two replicas' Submitters (a failover's overlap)
    first = Submitter(store, registry, build_broker(redis_url))
    second = Submitter(store, registry, build_broker(redis_url))
    # When both submit the job of the same tick
    assert first.submit_once(tick_job(registry)) is True
    assert second.submit_once(tick_job(registry, args={"message": "from the other one"})) is False
    # Then the store holds the first one, committed marked published, and Redis its one message
    stored = store.get(TICK_JOB_ID)
    assert stored.args == {"message": "hi"} and stored.published_at is not None
    assert messages_of(redis_client) == [TICK_JOB_ID]
    # And its outbox entry is deleted once the job is in Redis (the refused one wrote none)
    assert eventually(lambda: store.outbox_left(older_than=utcnow() + timedelta(seconds=1)) == [])


def test_a_tick_submitted_while_redis_is_away_is_left_to_the_relay(store: JobStore, registry: TaskRegistry) -> None:
    # Given a Submitter whose Redis does not answer
    submitter = Submitter(store, registry, build_broker(f"redis://127.0.0.1:{free_port()}"))
    # When a tick is submitted, it counts as fired: its row is committed
    assert submitter.submit_once(tick_job(registry)) is True
    # Then its outbox entry stays, listing it, for the relay to send
    [(_, left)] = store.outbox_left(older_than=utcnow() + timedelta(seconds=1))
    assert [job.id for job in left] == [TICK_JOB_ID]

"""The push relay on a real store and Redis: whichever path ends a job, its final state is delivered once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from dramatiq import Message
from sqlalchemy import Engine

from services.scheduler.push import DELIVERY_TASK, PushRelay
from shared.broker.publishing import build_broker
from shared.job import JobStatus, utcnow
from shared.store.jobs import JobStore
from shared.store.pushes import PushStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from tests.shared.store.test_jobs import make_job

URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def relay(engine: Engine, store: JobStore, registry: TaskRegistry, redis_url: str) -> PushRelay:
    return PushRelay(PushStore(engine), registry, Submitter(store, registry, build_broker(redis_url)))


def webhook_messages(redis_client: redis.Redis) -> list[Message[object]]:
    return [Message.decode(data) for data in redis_client.hvals("dramatiq:webhooks.msgs")]


def _cancel(store: JobStore, job_id: str) -> None:
    store.cancel(job_id)


def _succeed(store: JobStore, job_id: str) -> None:
    store.claim(job_id, owner="w", lease_s=30)
    assert store.finish(job_id, owner="w", status=JobStatus.SUCCEEDED, result={"n": 1})


def _fail(store: JobStore, job_id: str) -> None:
    store.claim(job_id, owner="w", lease_s=30)
    error = {"type": "ValueError", "message": "boom", "retryable": False}
    assert store.finish(job_id, owner="w", status=JobStatus.FAILED, error=error)


def _undeliverable(store: JobStore, job_id: str) -> None:
    assert store.fail_undelivered(job_id, {"type": "UnknownTask", "message": "no such task", "retryable": False})


@pytest.mark.parametrize(
    ("end", "status"),
    [(_cancel, "cancelled"), (_succeed, "succeeded"), (_fail, "failed"), (_undeliverable, "failed")],
)
def test_a_job_that_ends_gets_one_delivery_of_its_final_state(
    relay: PushRelay,
    store: JobStore,
    redis_client: redis.Redis,
    end: Callable[[JobStore, str], None],
    status: str,
) -> None:
    # Given a job submitted with a callback_url, and one without
    job = make_job(callback_url=URL, push_due=True, namespace="team-a", request_id="req-1")
    plain = make_job()
    store.insert([job, plain])
    # When nothing has ended, the relay sends nothing
    assert relay.run() == 0
    # When both end by the same path and the relay runs twice
    end(store, job.id)
    end(store, plain.id)
    assert relay.run() == 1
    assert relay.run() == 0
    # Then one webhooks.deliver job is queued, in the job's namespace, for its final state
    stored = store.get(job.id)
    assert not stored.push_due and stored.push_job_id is not None
    delivery = store.get(stored.push_job_id)
    assert delivery.task == DELIVERY_TASK and delivery.queue == "webhooks" and delivery.namespace == "team-a"
    assert delivery.args["url"] == URL
    payload = delivery.args["payload"]
    assert payload["id"] == delivery.id and payload["type"] == f"job.{status}"
    assert payload["data"]["id"] == job.id and payload["data"]["status"] == status
    assert "traceback" not in (payload["data"]["error"] or {})
    assert [message.message_id for message in webhook_messages(redis_client)] == [delivery.id]
    assert store.get(plain.id).push_job_id is None


def test_an_expired_job_is_announced(relay: PushRelay, store: JobStore) -> None:
    job = make_job(callback_url=URL, push_due=True, max_age_s=1.0, created_at=utcnow() - timedelta(seconds=5))
    store.insert([job])
    assert store.claim(job.id, owner="w", lease_s=30).job is not None
    assert store.get(job.id).status is JobStatus.EXPIRED
    assert relay.run() == 1
    assert store.get(store.get(job.id).push_job_id or "").args["payload"]["type"] == "job.expired"


def test_a_requeued_dead_letter_is_announced_again_when_it_ends_again(relay: PushRelay, store: JobStore) -> None:
    job = make_job(callback_url=URL, push_due=True)
    store.insert([job])
    _fail(store, job.id)
    assert relay.run() == 1
    first = store.get(job.id).push_job_id
    # When an operator requeues it, it waits: nothing is due
    assert store.requeue([job.id])
    assert store.get(job.id).push_due and relay.run() == 0
    # When it ends again, a second delivery announces it
    _succeed(store, job.id)
    assert relay.run() == 1
    second = store.get(job.id).push_job_id
    assert second not in (None, first)
    assert store.get(second or "").args["payload"]["type"] == "job.succeeded"


def test_deliveries_wait_for_a_worker_that_registered_the_delivery_task(
    engine: Engine, store: JobStore, redis_url: str
) -> None:
    # Given no worker has registered any task
    empty = TaskRegistry(engine, cache_s=0)
    relay = PushRelay(PushStore(engine), empty, Submitter(store, empty, build_broker(redis_url)))
    job = make_job(callback_url=URL, push_due=True)
    store.insert([job])
    store.cancel(job.id)
    # Then the relay leaves the delivery due
    assert relay.run() == 0
    assert store.get(job.id).push_due

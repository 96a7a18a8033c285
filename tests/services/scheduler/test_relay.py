"""The outbox relay on a real store and Redis."""

from __future__ import annotations

import time
from datetime import timedelta

import redis
from dramatiq import Message

from services.scheduler.relay import relay
from shared.broker.publishing import build_broker
from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def messages_of(redis_client: redis.Redis, queue: str = "default") -> list[str]:
    return sorted(Message.decode(data).message_id for data in redis_client.hvals(f"dramatiq:{queue}.msgs"))


def test_relay_publishes_unpublished_rows_and_the_jobs_of_left_entries(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    # Given a row written unpublished and an entry left behind by an API that never published
    old = utcnow() - timedelta(seconds=10)
    unpublished = make_job(created_at=old)
    store.insert([unpublished])
    handed, cancelled = make_job(), make_job()
    store.insert([handed, cancelled], outbox_id=new_id())
    store.cancel(cancelled.id)
    time.sleep(0.01)
    # When the relay runs
    sent = relay(store, build_broker(redis_url), grace_s=0)
    # Then both waiting jobs are in Redis (the cancelled one is not), and nothing is left to relay
    assert sent == 2
    assert messages_of(redis_client) == sorted([unpublished.id, handed.id])
    assert store.get(unpublished.id).published_at is not None
    assert store.unpublished(older_than=utcnow()) == []
    assert store.outbox_left(older_than=utcnow()) == []
    assert relay(store, build_broker(redis_url), grace_s=0) == 0


def test_relay_reaches_due_rows_behind_a_page_of_rows_due_later(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    # Given more rows beyond the broker's horizon than a page holds, written before a due one
    old = utcnow() - timedelta(minutes=1)
    later = [
        make_job(created_at=old, scheduled_for=utcnow() + timedelta(days=30), status=JobStatus.SCHEDULED)
        for _ in range(3)
    ]
    due = make_job(created_at=old + timedelta(seconds=1))
    store.insert([*later, due])
    # When the relay runs with pages of two
    sent = relay(store, build_broker(redis_url), grace_s=0, batch=2)
    # Then the due row is in Redis, and the later ones wait in the store
    assert sent == 1 and messages_of(redis_client) == [due.id]
    assert sorted(job.id for job in store.unpublished(older_than=utcnow())) == sorted(job.id for job in later)


def test_relay_leaves_entries_younger_than_the_grace(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    entry = new_id()
    store.insert([make_job()], outbox_id=entry)
    assert relay(store, build_broker(redis_url), grace_s=60) == 0
    assert messages_of(redis_client) == []
    assert [found for found, _ in store.outbox_left(older_than=utcnow() + timedelta(seconds=1))] == [entry]

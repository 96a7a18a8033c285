"""Jobs whose message Redis lost are published again, once, and only those."""

from __future__ import annotations

import redis
from dramatiq import Message
from sqlalchemy import Engine, update

from services.scheduler.reconcile import COUNT_PER_CALL, LostMessages
from shared.broker.publishing import build_broker, message_for
from shared.clock import FakeClock
from shared.job import JobStatus
from shared.store.jobs import JobStore
from shared.store.models import jobs
from tests.shared.store.test_jobs import make_job


def messages_of(redis_client: redis.Redis, queue: str) -> list[str]:
    return sorted(Message.decode(data).message_id for data in redis_client.hvals(f"dramatiq:{queue}.msgs"))


def test_a_job_without_a_message_twice_is_published_again_once(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    broker = build_broker(redis_url)
    # Given published waiting jobs: one queued, one delayed, one whose message Redis lost,
    # one never published (the relay's) and one running (its message acked or in flight elsewhere)
    queued, delayed, lost, unpublished, running = (make_job() for _ in range(5))
    store.insert([queued, delayed, lost, unpublished, running])
    store.mark_published([queued.id, delayed.id, lost.id, running.id])
    broker.enqueue(message_for(queued))
    broker.enqueue(message_for(delayed), delay=60_000)
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == running.id).values(status=JobStatus.RUNNING.value))
    # (the pass looks a second later on its clock, so every job is older than its min_age_s of 0)
    clock = FakeClock()
    clock.advance(1)
    reconcile = LostMessages(store, broker, min_age_s=0, clock=clock)

    # When the pass runs once, the lost job is only a suspect
    assert reconcile.run() == 0
    assert messages_of(redis_client, "default") == [queued.id]

    # Then on the second run it is published again, and nothing else is
    assert reconcile.run() == 1
    assert messages_of(redis_client, "default") == sorted([queued.id, lost.id])
    assert messages_of(redis_client, "default.DQ") == [delayed.id]
    # And the next run finds its message and publishes nothing more
    assert reconcile.run() == 0
    assert reconcile.run() == 0
    assert len(messages_of(redis_client, "default")) == 2


def test_a_suspect_whose_row_moved_on_is_left_alone(redis_url: str, redis_client: redis.Redis, engine: Engine) -> None:
    store = JobStore(engine)
    broker = build_broker(redis_url)
    # Given a published job with no message in Redis, seen once by the pass
    job = make_job()
    store.insert([job])
    store.mark_published([job.id])
    clock = FakeClock()
    clock.advance(1)
    reconcile = LostMessages(store, broker, min_age_s=0, clock=clock)
    assert reconcile.run() == 0
    # When a worker claims it and records a failed attempt (its retry message in motion)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(status=JobStatus.RETRYING.value, attempts=1))
    # Then the next pass does not publish it: the row changed since it was first missed
    assert reconcile.run() == 0
    assert messages_of(redis_client, "default") == []


def test_young_jobs_are_not_suspects(redis_url: str, redis_client: redis.Redis, store: JobStore) -> None:
    # Given a published job created just now, its message not yet in Redis
    clock = FakeClock()
    job = make_job()
    store.insert([job])
    store.mark_published([job.id])
    reconcile = LostMessages(store, build_broker(redis_url), min_age_s=60, clock=clock)
    # Then however often the pass runs, it waits for the job to be a minute old
    assert reconcile.run() == 0 and reconcile.run() == 0
    assert messages_of(redis_client, "default") == []
    # And once it is past a minute old on the pass's clock, two runs without its message publish it again
    clock.advance(65)
    assert reconcile.run() == 0 and reconcile.run() == 1
    assert messages_of(redis_client, "default") == [job.id]


def test_a_big_backlog_is_swept_a_bounded_number_of_messages_per_pass(
    redis_url: str, redis_client: redis.Redis, store: JobStore
) -> None:
    broker = build_broker(redis_url)
    # Given 6,000 messages queued and 1,000 delayed, among them a waiting job's; and a job whose message was lost
    backlog = [make_job() for _ in range(7_000)]
    broker.enqueue_many([(message_for(job), None if i < 6_000 else 60_000) for i, job in enumerate(backlog)])
    queued, lost = backlog[3_000], make_job()
    store.insert([queued, lost])
    store.mark_published([queued.id, lost.id])
    clock = FakeClock()
    clock.advance(1)
    reconcile = LostMessages(store, broker, min_age_s=0, entries_per_pass=1_000, clock=clock)
    # When the pass runs until it publishes something
    decoded, runs = [], 0
    while not reconcile.run():
        decoded.append(reconcile.sweep.decoded)
        runs += 1
        assert runs < 100
    decoded.append(reconcile.sweep.decoded)
    # Then no pass decoded much more than its 1,000 (one HSCAN may return a little more than asked),
    # two sweeps of the 7,000 took at least fourteen passes, and only the lost job was published again
    assert max(decoded) <= 1_000 + 2 * COUNT_PER_CALL, decoded
    assert len(decoded) >= 14 and sum(decoded) >= 2 * 7_000
    assert [Message.decode(data).message_id for data in redis_client.hvals("dramatiq:default.msgs")].count(lost.id) == 1
    assert len(redis_client.hvals("dramatiq:default.msgs")) == 6_001

"""Running rows nobody holds are ended by their retry policy; rows someone may still hold are left alone."""

from __future__ import annotations

import time
from datetime import timedelta

import redis
from dramatiq import Message
from prometheus_client import REGISTRY
from sqlalchemy import update

from services.scheduler.sweeper import SWEEP_GRACE_S, StrandedRuns
from shared.broker.orphans import HEARTBEATS
from shared.broker.publishing import build_broker, message_for
from shared.job import Job, JobStatus, utcnow
from shared.store.jobs import JobStore
from shared.store.models import jobs
from shared.store.tasks import TaskRegistry
from tests.shared.store.test_jobs import make_job

DEAD_AFTER_S = 10.0


def running(store: JobStore, owner: str, *, expired_s: float = 2 * SWEEP_GRACE_S, **overrides: object) -> Job:
    """A row ``running`` under ``owner``'s lease, expired ``expired_s`` ago (negative: still valid)."""
    job = make_job(**overrides)
    store.insert([job])
    store.mark_published([job.id])
    now = utcnow()
    with store.engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id)
            .values(
                status=JobStatus.RUNNING.value,
                attempts=1,
                started_at=now - timedelta(seconds=abs(expired_s) + 30),
                lease_owner=owner,
                lease_expires_at=now - timedelta(seconds=expired_s),
            )
        )
    return store.get(job.id)


def messages(client: redis.Redis, name: str) -> set[str]:
    return {Message.decode(data).message_id for data in client.hvals(f"dramatiq:{name}.msgs")}


def swept(outcome: str) -> float:
    return REGISTRY.get_sample_value("jobrelay_jobs_swept_total", {"outcome": outcome}) or 0.0


def test_each_way_a_row_is_orphaned_is_put_back_failed_or_cancelled(
    redis_url: str, redis_client: redis.Redis, store: JobStore, registry: TaskRegistry
) -> None:
    broker = build_broker(redis_url)
    before = {outcome: swept(outcome) for outcome in ("retrying", "failed", "cancelled")}
    # Given running rows with their lease long expired and their message in no queue:
    # a worker recovered already (no heartbeat left), with retries left
    recovered = running(store, "recovered-worker")
    # a worker whose heartbeat stopped and nobody recovered (its whole node gone)
    redis_client.zadd(HEARTBEATS, {"silent-worker": int((time.time() - 5 * DEAD_AFTER_S) * 1000)})
    silent = running(store, "silent-worker")
    # a worker that never beat, on the job's last attempt
    last = running(store, "unknown-worker", max_retries=0)
    # one an operator asked to cancel
    cancel = running(store, "recovered-worker")
    store.cancel(cancel.id)
    # And rows someone may still hold: a live worker's, one whose message waits in its queue, in a
    # worker's hands (its ack set, its body in the queue's hash), on the delay queue, and one whose
    # lease expired only within the grace, or not at all
    redis_client.zadd(HEARTBEATS, {"live-worker": int(time.time() * 1000)})
    live = running(store, "live-worker")
    queued = running(store, "recovered-worker")
    broker.enqueue(message_for(queued))
    in_hand = running(store, "recovered-worker")
    sent = broker.enqueue(message_for(in_hand))
    redis_client.lrem("dramatiq:default", 0, sent.options["redis_message_id"])
    redis_client.sadd("dramatiq:__acks__.recovered-worker.default", sent.options["redis_message_id"])
    delayed = running(store, "recovered-worker")
    broker.enqueue(message_for(delayed), delay=60_000)
    young = running(store, "recovered-worker", expired_s=SWEEP_GRACE_S / 2)
    leased = running(store, "recovered-worker", expired_s=-30)
    sweeper = StrandedRuns(store, registry, broker, dead_after_s=DEAD_AFTER_S)

    # When the sweep runs
    assert sweeper.run() == 4

    # Then the orphans with retries left are retrying, with a new message due after their backoff
    for job in (recovered, silent):
        row = store.get(job.id)
        assert (row.status, row.attempts, row.lease_owner) == (JobStatus.RETRYING, 1, None)
        assert row.error is not None and row.error["type"] == "WorkerLost"
        assert row.next_attempt_at is not None
    assert {recovered.id, silent.id} <= messages(redis_client, "default") | messages(redis_client, "default.DQ")
    # And the one out of retries failed for good, dead; the cancelled one is cancelled
    row = store.get(last.id)
    assert row.status is JobStatus.FAILED and row.dead and row.error is not None
    assert row.error["type"] == "WorkerLost"
    assert store.get(cancel.id).status is JobStatus.CANCELLED
    assert not {last.id, cancel.id} & (messages(redis_client, "default") | messages(redis_client, "default.DQ"))
    # And each is counted by outcome
    assert swept("retrying") - before["retrying"] == 2
    assert swept("failed") - before["failed"] == 1
    assert swept("cancelled") - before["cancelled"] == 1
    # And the rows someone may still hold are untouched
    for job in (live, queued, in_hand, delayed, young, leased):
        row = store.get(job.id)
        assert (row.status, row.lease_owner, row.attempts) == (JobStatus.RUNNING, job.lease_owner, 1)
    # And the next sweep finds nothing more to do
    assert sweeper.run() == 0

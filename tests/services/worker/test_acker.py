"""A finished job's message is acked (succeeded) or dead-lettered (failed for good) only after its final status is
committed, off the worker thread."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from services.worker.ack_sets import AckSets
from services.worker.acker import Acker
from services.worker.status_writer import StatusWriter
from shared.broker.dead_letters import dead_letter_keys
from shared.broker.publishing import NAMESPACE, message_for
from shared.job import Job, JobStatus
from shared.store.attempts import FinishRequest
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from tests.services.worker.conftest import worker_broker
from tests.shared.store.test_engine import write_lock_held_elsewhere
from tests.shared.store.test_jobs import make_job

OWNER = "worker-under-test"
DEAD, DEAD_BODIES = dead_letter_keys(NAMESPACE, "default")


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_ack_waits_for_the_commit_through_a_store_outage(
    sqlite_url: str, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a job claimed by this worker, its message fetched (in the worker's ack set)
    engine = create_store_engine(sqlite_url, timeout_s=0.2)
    migrate(engine)
    store = JobStore(engine)
    job = make_job()
    store.insert([job])
    finals: list[Job] = []
    acker = Acker(AckSets(redis_client, namespace=NAMESPACE, owner=OWNER), on_final=finals.append)
    broker = worker_broker(redis_url, OWNER, deferred_acks=acker)
    broker.enqueue(message_for(job))
    consumer = broker.consume("default", prefetch=1, timeout=100)
    message = next(message for message in consumer if message is not None)
    claimed = store.claim(job.id, owner=OWNER, lease_s=30)
    assert claimed.job is not None
    acks = f"dramatiq:__acks__.{OWNER}.default"
    assert redis_client.scard(acks) == 1
    writer = StatusWriter(store)

    # And another process holding the store's write lock
    with write_lock_held_elsewhere(sqlite_url):
        # When the job's success is handed over and the consumer is told to ack
        request = FinishRequest(job.id, OWNER, JobStatus.SUCCEEDED, result="done")
        acker.defer(message.options["redis_message_id"], writer.finish_later(request), claimed.job)
        consumer.ack(message)
        # Then while the store cannot commit, the message stays unacked and the row running
        time.sleep(0.6)
        assert redis_client.scard(acks) == 1
        assert store.get(job.id).status is JobStatus.RUNNING
        assert finals == []
    # And once the store is back the row is final, then the message acked and the workflow told
    assert wait_for(lambda: redis_client.scard(acks) == 0)
    assert store.get(job.id).status is JobStatus.SUCCEEDED and store.get(job.id).result == "done"
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    assert wait_for(lambda: [final.id for final in finals] == [job.id])
    writer.stop()
    acker.stop()
    consumer.close()


def test_a_message_without_a_deferred_ack_is_acked_at_once(redis_url: str, redis_client: redis.Redis) -> None:
    broker = worker_broker(redis_url, OWNER)
    broker.enqueue(message_for(make_job()))
    consumer = broker.consume("default", prefetch=1, timeout=100)
    message = next(message for message in consumer if message is not None)
    consumer.ack(message)
    assert redis_client.scard(f"dramatiq:__acks__.{OWNER}.default") == 0
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    consumer.close()


def test_failed_jobs_are_dead_lettered_together_once_their_failure_is_committed(
    sqlite_url: str, redis_url: str, redis_client: redis.Redis
) -> None:
    # Given three jobs claimed by this worker, their messages fetched (in the worker's ack set)
    engine = create_store_engine(sqlite_url, timeout_s=0.2)
    migrate(engine)
    store = JobStore(engine)
    jobs = [make_job() for _ in range(3)]
    store.insert(jobs)
    finals: list[Job] = []
    acker = Acker(AckSets(redis_client, namespace=NAMESPACE, owner=OWNER), on_final=finals.append)
    broker = worker_broker(redis_url, OWNER, deferred_acks=acker)
    for job in jobs:
        broker.enqueue(message_for(job))
    consumer = broker.consume("default", prefetch=3, timeout=100)
    messages = [next(message for message in consumer if message is not None) for _ in jobs]
    # (fetched in the order enqueued: the claims below line up with them)
    assert [m.message_id for m in messages] == [job.id for job in jobs]
    claims = [store.claim(job.id, owner=OWNER, lease_s=30) for job in jobs]
    writer = StatusWriter(store)
    with write_lock_held_elsewhere(sqlite_url):
        # When each one's failure for good is handed over and the consumer is told to nack
        for message, claimed in zip(messages, claims, strict=True):
            assert claimed.job is not None
            error = {"type": "Boom", "message": "boom", "retryable": False}
            request = FinishRequest(claimed.job.id, OWNER, JobStatus.FAILED, error=error)
            acker.defer(message.options["redis_message_id"], writer.finish_later(request), claimed.job, dead=True)
            message.fail()
            consumer.nack(message)
        # Then while the failures are not committed, no message is dead yet and none acked
        time.sleep(0.6)
        assert redis_client.scard(f"dramatiq:__acks__.{OWNER}.default") == 3
        assert redis_client.zcard(DEAD) == 0
    # And once committed, every row is failed and dead, and every message is a dead letter (none left unacked)
    assert wait_for(lambda: redis_client.zcard(DEAD) == 3)
    assert redis_client.scard(f"dramatiq:__acks__.{OWNER}.default") == 0
    assert redis_client.hlen("dramatiq:default.msgs") == 0
    # (filed under their job ids)
    assert sorted(redis_client.hkeys(DEAD_BODIES)) == sorted(job.id.encode() for job in jobs)
    for job in jobs:
        row = store.get(job.id)
        assert row.status is JobStatus.FAILED and row.dead
    assert wait_for(lambda: sorted(final.id for final in finals) == sorted(job.id for job in jobs))
    writer.stop()
    acker.stop()
    consumer.close()

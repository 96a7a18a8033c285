"""The outbox relay: on the store's twin, a fake clock and Dramatiq's StubBroker, then on a real store and Redis."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import timedelta

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.exc import OperationalError

from services.scheduler.relay import OutboxRelay, relay
from shared.broker.publishing import build_broker
from shared.clock import FakeClock
from shared.ids import id_lower_bound, new_id
from shared.job import JobStatus, utcnow
from shared.store.jobs import JobStore
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job


def messages_of(redis_client: redis.Redis, queue: str = "default") -> list[str]:
    return sorted(Message.decode(data).message_id for data in redis_client.hvals(f"dramatiq:{queue}.msgs"))


def fake_clock() -> FakeClock:
    """A clock at about the real time (``publish`` times a delay on the real one), half a millisecond into a
    millisecond: an entry's age is read from its id, to the millisecond."""
    return FakeClock(utcnow().replace(microsecond=500))


def stub_broker() -> StubBroker:
    broker = StubBroker()
    broker.declare_queue("default")
    return broker


def queued(broker: StubBroker, queue: str = "default") -> list[str]:
    return sorted(Message.decode(data).message_id for data in list(broker.queues[queue].queue))


def test_an_entry_left_behind_is_sent_once_it_is_older_than_the_grace() -> None:
    clock = fake_clock()
    store, broker = MemoryJobStore(clock), stub_broker()
    # Given an outbox entry written now (its id is of this millisecond, as new_id would make it), one of its
    # two jobs cancelled since
    handed, cancelled = make_job(), make_job()
    store.insert([handed, cancelled], outbox_id=id_lower_bound(clock.now()))
    store.cancel(cancelled.id)
    # When the relay runs until the entry is exactly the grace old
    for step_s in (1.5, 0.5):
        clock.advance(step_s)
        assert relay(store, broker, grace_s=2, clock=clock) == 0
    # Then nothing is sent: the process that wrote it may still be publishing it
    assert queued(broker) == []
    # When the entry is older than the grace
    clock.advance(0.001)
    # Then its waiting job is sent, the entry deleted, and a next run sends nothing
    assert relay(store, broker, grace_s=2, clock=clock) == 1
    assert queued(broker) == [handed.id]
    assert store.outbox_left(older_than=clock.now()) == []
    assert relay(store, broker, grace_s=2, clock=clock) == 0
    assert queued(broker) == [handed.id]


def test_unpublished_rows_are_sent_after_the_grace_when_the_broker_takes_them() -> None:
    clock = fake_clock()
    store, broker = MemoryJobStore(clock), stub_broker()
    # Given rows written unpublished now: one due now, one in an hour, one beyond the broker's horizon
    now = clock.now()
    due, soon, later = (
        make_job(created_at=now),
        make_job(created_at=now, scheduled_for=now + timedelta(hours=1), status=JobStatus.SCHEDULED),
        make_job(created_at=now, scheduled_for=now + timedelta(days=30), status=JobStatus.SCHEDULED),
    )
    store.insert([due, soon, later])
    # When the relay runs within the grace, nothing is sent
    assert relay(store, broker, grace_s=2, clock=clock) == 0
    # When it runs past it
    clock.advance(2.5)
    assert relay(store, broker, grace_s=2, clock=clock) == 2
    # Then the due row is queued, the one due in an hour waits in the delay queue, both marked published then
    assert queued(broker) == [due.id] and queued(broker, "default.DQ") == [soon.id]
    assert store.get(due.id).published_at == clock.now() and store.get(soon.id).published_at == clock.now()
    # And the row beyond the horizon stays in the store, unpublished, for a later run
    assert [job.id for job in store.unpublished(older_than=clock.now())] == [later.id]
    assert relay(store, broker, grace_s=2, clock=clock) == 0


class FullDiskStore(MemoryJobStore):
    """The store's twin whose relay writes fail while ``full``, as SQLite's do on a full disk."""

    full = False

    def _refuse(self) -> None:
        if self.full:
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))

    def outbox_sent(self, entry_ids: Sequence[str]) -> None:
        self._refuse()
        super().outbox_sent(entry_ids)

    def mark_published(self, job_ids: Iterable[str]) -> None:
        self._refuse()
        super().mark_published(job_ids)


def test_a_relay_that_cannot_delete_the_entry_sends_its_jobs_once_not_at_every_tick() -> None:
    clock = fake_clock()
    store, broker = FullDiskStore(clock), stub_broker()
    outbox_relay = OutboxRelay(store, broker, grace_s=2, clock=clock)
    # Given an entry left behind, older than the grace, on a store whose disk is full
    job = make_job()
    store.insert([job], outbox_id=id_lower_bound(clock.now()))
    clock.advance(3)
    store.full = True
    # When the relay ticks while the disk stays full
    for _ in range(5):
        with pytest.raises(OperationalError, match="disk is full"):
            outbox_relay.run()
        clock.advance(1)
    # Then the job was sent once: the first tick sent it, the others could not record that and sent nothing
    assert queued(broker) == [job.id]
    # When the disk has room again, the next tick deletes the entry and sends nothing more
    store.full = False
    assert outbox_relay.run() == 0
    assert store.outbox_left(older_than=clock.now()) == []
    assert queued(broker) == [job.id]


def test_a_relay_that_cannot_mark_rows_published_sends_them_once_not_at_every_tick() -> None:
    clock = fake_clock()
    store, broker = FullDiskStore(clock), stub_broker()
    outbox_relay = OutboxRelay(store, broker, grace_s=2, clock=clock)
    # Given a row written unpublished, older than the grace, on a store whose disk is full
    job = make_job(created_at=clock.now())
    store.insert([job])
    clock.advance(3)
    store.full = True
    # When the relay ticks while the disk stays full, it sends the row once
    for _ in range(5):
        with pytest.raises(OperationalError):
            outbox_relay.run()
        clock.advance(1)
    assert queued(broker) == [job.id]
    # And once there is room, the row is marked published and not sent again
    store.full = False
    assert outbox_relay.run() == 0
    assert store.get(job.id).published_at is not None
    assert queued(broker) == [job.id]


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
    # When the relay runs, a second later on its clock
    clock = FakeClock()
    clock.advance(1)
    sent = relay(store, build_broker(redis_url), grace_s=0, clock=clock)
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

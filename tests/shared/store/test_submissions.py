"""Submission and the outbox (``shared/store/submissions.py``) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DataError

from shared.errors import Conflict, NotFound
from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def test_insert_and_get_round_trip(store: JobStore) -> None:
    job = make_job(args={"nested": {"list": [1, 2.5, None, "x"]}}, priority=3)
    [(_, created)] = store.insert([job])
    assert created
    loaded = store.get(job.id)
    assert loaded.args == {"nested": {"list": [1, 2.5, None, "x"]}}
    assert loaded.status is JobStatus.QUEUED
    assert loaded.created_at == job.created_at.replace(microsecond=loaded.created_at.microsecond)
    assert loaded.created_at.tzinfo is not None


def test_insert_of_many_rows_keeps_every_value_and_the_order(store: JobStore) -> None:
    # More rows than one statement could bind one placeholder per value (PostgreSQL: 65,535).
    now = utcnow()
    many = [
        make_job(
            args={"n": n},
            priority=n % 7,
            time_limit_s=None if n % 2 else 1.5,
            scheduled_for=now + timedelta(seconds=n) if n % 3 == 0 else None,
            idempotency_key=f"key-{n}" if n % 5 == 0 else None,
            request_hash="h" if n % 5 == 0 else None,
            held=n % 11 == 0,
        )
        for n in range(2500)
    ]
    outcomes = store.insert(many)
    assert [job.id for job, created in outcomes if created] == [job.id for job in many]
    for n in (0, 1, 3, 5, 11, 2499):
        loaded = store.get(many[n].id)
        assert loaded.args == {"n": n} and loaded.priority == n % 7
        assert loaded.time_limit_s == (None if n % 2 else 1.5)
        assert loaded.scheduled_for == many[n].scheduled_for
        assert loaded.idempotency_key == many[n].idempotency_key
        assert loaded.held is (n % 11 == 0)
        assert loaded.progress is None and loaded.result is None and loaded.published_at is None


def test_insert_refuses_a_value_longer_than_its_column_on_postgresql(engine: Engine) -> None:
    store = JobStore(engine)
    if engine.dialect.name == "sqlite":
        # SQLite keeps any length; the API's validation bounds every field before the store.
        store.insert([make_job(request_id="r" * 65)])
        return
    with pytest.raises(DataError):
        store.insert([make_job(request_id="r" * 65)])


def test_idempotency_key_returns_original_or_conflicts(store: JobStore) -> None:
    first = make_job(idempotency_key="k1", request_hash="h1")
    store.insert([first])
    [(again, created)] = store.insert([make_job(idempotency_key="k1", request_hash="h1")])
    assert not created and again.id == first.id
    with pytest.raises(Conflict):
        store.insert([make_job(idempotency_key="k1", request_hash="other")])


def test_insert_groups_answers_each_request_on_its_own(store: JobStore) -> None:
    # Given a stored job with key k1
    stored = make_job(idempotency_key="k1", request_hash="h1")
    store.insert([stored])
    # When four requests are committed together: a fresh one, a repeat, a conflict
    # (whose other job must not be stored) and a request repeating a key within itself
    fresh, repeat = make_job(), make_job(idempotency_key="k1", request_hash="h1")
    refused = [make_job(), make_job(idempotency_key="k1", request_hash="other")]
    doubled = [make_job(idempotency_key="k2"), make_job(idempotency_key="k2")]
    outcomes = store.insert_groups([[fresh], [repeat], refused, doubled])
    # Then each gets its own answer and only the fresh job is new
    assert outcomes[0] == [(fresh, True)]
    assert not isinstance(outcomes[1], Conflict) and [(j.id, c) for j, c in outcomes[1]] == [(stored.id, False)]
    assert isinstance(outcomes[2], Conflict) and isinstance(outcomes[3], Conflict)
    store.get(fresh.id)
    for job in [*refused, *doubled]:
        with pytest.raises(NotFound):
            store.get(job.id)


def test_insert_groups_with_one_new_key_twice_stores_it_once(store: JobStore) -> None:
    # Given two concurrent requests with the same new key, one a repeat, one different
    first = make_job(idempotency_key="k", request_hash="h")
    outcomes = store.insert_groups(
        [[first], [make_job(idempotency_key="k", request_hash="h")], [make_job(idempotency_key="k", request_hash="x")]]
    )
    # Then the first creates it, the repeat gets it back, the different one conflicts
    assert outcomes[0] == [(first, True)]
    assert not isinstance(outcomes[1], Conflict) and [(j.id, c) for j, c in outcomes[1]] == [(first.id, False)]
    assert isinstance(outcomes[2], Conflict)


def test_unpublished_and_mark_published(store: JobStore) -> None:
    job = make_job(created_at=utcnow() - timedelta(seconds=10))
    store.insert([job])
    assert [j.id for j in store.unpublished(older_than=utcnow())] == [job.id]
    store.mark_published([job.id])
    assert store.unpublished(older_than=utcnow()) == []


def test_insert_with_an_outbox_entry_marks_and_lists_only_the_jobs_the_broker_takes_now(store: JobStore) -> None:
    now = utcnow()
    due, delayed = make_job(), make_job(scheduled_for=now + timedelta(hours=1), status=JobStatus.SCHEDULED)
    held = make_job(held=True)
    beyond = make_job(scheduled_for=now + timedelta(days=30), status=JobStatus.SCHEDULED)
    entry = new_id()
    store.insert([due, delayed, held, beyond], outbox_id=entry)
    # The broker takes the first two now: written marked published, under the entry
    assert all(store.get(job.id).published_at is not None for job in (due, delayed))
    assert due.published_at is not None and held.published_at is None
    [(found, waiting)] = store.outbox_left(older_than=utcnow() + timedelta(seconds=1))
    assert found == entry and [job.id for job in waiting] == [due.id, delayed.id]
    # A held step and a job beyond the broker's horizon stay unpublished, for their own paths
    assert store.get(held.id).published_at is None and store.get(beyond.id).published_at is None
    assert [job.id for job in store.unpublished(older_than=utcnow() + timedelta(seconds=1))] == [beyond.id]
    # Too young for the relay, then gone once sent
    assert store.outbox_left(older_than=now - timedelta(seconds=1)) == []
    store.outbox_sent([entry])
    assert store.outbox_left(older_than=utcnow() + timedelta(seconds=1)) == []


def test_outbox_left_lists_only_the_jobs_still_waiting(store: JobStore) -> None:
    waiting, cancelled = make_job(), make_job()
    entry = new_id()
    store.insert([waiting, cancelled], outbox_id=entry)
    store.cancel(cancelled.id)
    [(found, jobs_left)] = store.outbox_left(older_than=utcnow() + timedelta(seconds=1))
    assert found == entry and [job.id for job in jobs_left] == [waiting.id]


def test_insert_groups_deletes_the_sent_entries_in_its_commit(store: JobStore) -> None:
    first, second = new_id(), new_id()
    store.insert([make_job()], outbox_id=first)
    later = make_job()
    store.insert_groups([[later]], outbox_id=second, sent=[first])
    assert [entry for entry, _ in store.outbox_left(older_than=utcnow() + timedelta(seconds=1))] == [second]


def test_insert_groups_with_nothing_new_still_deletes_the_sent_entries(store: JobStore) -> None:
    first = new_id()
    store.insert([make_job(idempotency_key="k", request_hash="h")], outbox_id=first)
    [outcome] = store.insert_groups([[make_job(idempotency_key="k", request_hash="h")]], sent=[first])
    assert not isinstance(outcome, Conflict) and [created for _, created in outcome] == [False]
    assert store.outbox_left(older_than=utcnow() + timedelta(seconds=1)) == []


def test_an_insert_refused_writes_no_outbox_entry(store: JobStore) -> None:
    store.insert([make_job(idempotency_key="k", request_hash="a")])
    with pytest.raises(Conflict):
        store.insert([make_job(), make_job(idempotency_key="k", request_hash="b")], outbox_id=new_id())
    assert store.outbox_left(older_than=utcnow() + timedelta(seconds=1)) == []

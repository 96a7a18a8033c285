"""The job repository's reads and cancellation on SQLite and PostgreSQL, and ``make_job`` for every store test."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from shared.errors import Conflict, InvalidInput, NotFound
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.store.attempts import ClaimOutcome
from shared.store.jobs import JobFilter, JobStore
from shared.store.models import metadata


def make_job(**overrides: object) -> Job:
    now = utcnow()
    values: dict[str, object] = {
        "id": new_id(),
        "task": "diagnostics.echo",
        "queue": "default",
        "status": JobStatus.QUEUED,
        "args": {"message": "hi"},
        "max_retries": 3,
        "created_at": now,
        "updated_at": now,
    }
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_get_unknown_raises_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.get(new_id())


def test_list_is_newest_first_and_cursor_is_stable_under_inserts(store: JobStore) -> None:
    # Given five jobs
    ids = [job.id for job, _ in store.insert([make_job() for _ in range(5)])]
    # When the first page of two is read and new jobs arrive before the next page
    page = store.page(JobFilter(), limit=2)
    assert [j.id for j in page.items] == ids[::-1][:2]
    store.insert([make_job() for _ in range(3)])
    second = store.page(JobFilter(), limit=2, cursor=page.next_cursor)
    third = store.page(JobFilter(), limit=2, cursor=second.next_cursor)
    # Then the pages continue exactly where the first stopped
    assert [j.id for j in second.items] == ids[::-1][2:4]
    assert [j.id for j in third.items] == ids[::-1][4:]
    assert third.next_cursor is None


def test_list_filters(store: JobStore) -> None:
    store.insert([make_job(task="a.b"), make_job(task="c.d", queue="other"), make_job(status=JobStatus.FAILED)])
    assert {j.task for j in store.page(JobFilter(task="a.b")).items} == {"a.b"}
    assert [j.queue for j in store.page(JobFilter(queue="other")).items] == ["other"]
    assert len(store.page(JobFilter(status=JobStatus.FAILED)).items) == 1


def test_bad_cursor_is_invalid_input(store: JobStore) -> None:
    with pytest.raises(InvalidInput):
        store.page(JobFilter(), cursor="not-a-cursor!")


def test_cancel_waiting_job_is_final_and_never_claimed(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    assert store.cancel(job.id).status is JobStatus.CANCELLED
    assert store.claim(job.id, owner="w", lease_s=30).outcome is ClaimOutcome.DUPLICATE
    with pytest.raises(Conflict):
        store.cancel(job.id)


def test_cancel_running_job_flags_it(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    store.claim(job.id, owner="w", lease_s=30)
    cancelled = store.cancel(job.id)
    assert cancelled.status is JobStatus.RUNNING and cancelled.to_api()["cancel_requested"] is True

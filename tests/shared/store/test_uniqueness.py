"""Unique jobs and debounce in the store (``shared/store/uniqueness.py``), on SQLite and PostgreSQL,
and on the in-memory twin; the race between API processes is run with real concurrent transactions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from shared.job import Job, JobStatus, utcnow
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.memory import MemoryJobStore
from shared.store.models import jobs
from shared.store.uniqueness import DEDUPLICATED, unique_hash
from tests.conftest import _truncate
from tests.shared.store.test_jobs import make_job

Store = JobStore | MemoryJobStore


def unique_job(*, until_s: float | None = 60.0, debounce_s: float | None = None, **overrides: object) -> Job:
    job = make_job(**overrides)
    job.unique_key = unique_hash(job.task, job.args, None)
    job.unique_until = utcnow() + timedelta(seconds=until_s) if until_s is not None else None
    job.extra["debounce_s"] = debounce_s
    return job


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def either(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The SQL store on SQLite and PostgreSQL, and its twin, with the same expectations."""
    if request.param == "memory":
        yield MemoryJobStore()
        return
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("required_postgres_url")
    engine = create_store_engine(url)
    migrate(engine)
    _truncate(engine)
    yield JobStore(engine)
    engine.dispose()


def set_status(store: Store, job_id: str, status: JobStatus) -> None:
    if isinstance(store, MemoryJobStore):
        store._rows[job_id].status = status
        return
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status=status.value))


def test_unique_key_canonical_json_ignores_key_order_and_tells_tasks_apart() -> None:
    assert unique_hash("a.b", {"x": 1, "y": [1, 2]}, None) == unique_hash("a.b", {"y": [1, 2], "x": 1}, None)
    assert unique_hash("a.b", {"x": 1}, None) != unique_hash("a.c", {"x": 1}, None)
    assert unique_hash("a.b", {"x": 1}, "k") == unique_hash("a.b", {"x": 2}, "k")
    assert unique_hash("a.b", {"x": 1}, None) != unique_hash("a.b", {"x": 1}, '{"x":1}')


def test_a_held_key_returns_the_holder_until_it_finishes(either: Store) -> None:
    # Given a waiting unique job
    first = unique_job()
    [(_, created)] = either.insert([first])
    assert created
    # When the same task and args are submitted while it waits, then while it runs
    [(again, created)] = either.insert([unique_job()])
    assert not created and again.id == first.id and again.extra[DEDUPLICATED] == "unique"
    set_status(either, first.id, JobStatus.RUNNING)
    [(again, created)] = either.insert([unique_job()])
    assert not created and again.id == first.id
    # Then once it has finished, the key is free: a new job is added
    set_status(either, first.id, JobStatus.SUCCEEDED)
    second = unique_job()
    [(stored, created)] = either.insert([second])
    assert created and stored.id == second.id
    # And other args are another key
    [(_, created)] = either.insert([unique_job(args={"message": "other"})])
    assert created


def test_a_lapsed_holder_gives_its_key_up(either: Store) -> None:
    first = unique_job(until_s=-1)
    either.insert([first])
    second = unique_job()
    [(stored, created)] = either.insert([second])
    assert created and stored.id == second.id
    assert either.get(first.id).unique_key is None and either.get(first.id).status is JobStatus.QUEUED
    [(again, created)] = either.insert([unique_job()])
    assert not created and again.id == second.id


def test_debounce_cancels_the_waiting_holder_and_releases_a_running_one(either: Store) -> None:
    # Given a debounced job waiting
    first = unique_job(until_s=None, debounce_s=5, status=JobStatus.SCHEDULED)
    either.insert([first])
    # When another submission of the burst comes
    second = unique_job(until_s=None, debounce_s=5, status=JobStatus.SCHEDULED)
    [(stored, created)] = either.insert([second])
    # Then it is added and the first is cancelled, saying by which job
    assert created and stored.id == second.id
    replaced = either.get(first.id)
    assert replaced.status is JobStatus.CANCELLED and replaced.unique_key is None
    assert replaced.error is not None and second.id in replaced.error["message"]
    # When the holder is running already, it keeps running and the new job still goes in
    set_status(either, second.id, JobStatus.RUNNING)
    third = unique_job(until_s=None, debounce_s=5, status=JobStatus.SCHEDULED)
    [(stored, created)] = either.insert([third])
    assert created and stored.id == third.id
    assert either.get(second.id).status is JobStatus.RUNNING and either.get(second.id).unique_key is None


def test_one_request_repeating_a_unique_job_stores_it_once(either: Store) -> None:
    first, repeat = unique_job(), unique_job()
    outcomes = either.insert([first, repeat])
    assert outcomes[0] == (first, True)
    assert outcomes[1][0].id == first.id and not outcomes[1][1]


def test_concurrent_submissions_of_one_unique_job_make_one_job(engine: Engine) -> None:
    # Given many threads, each its own store (its own connections, as API processes have), at a barrier
    threads_n = 8
    barrier = threading.Barrier(threads_n, timeout=30)
    results: list[tuple[Job, bool]] = []
    failures: list[BaseException] = []

    def submit() -> None:
        store = JobStore(engine)
        try:
            barrier.wait()
            results.extend(store.insert([unique_job()]))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then exactly one job was added, and every submission got it
    assert not failures and len(results) == threads_n
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1


def test_a_requeued_dead_letter_gives_way_to_a_waiting_job_of_its_key(tmp_path: Path) -> None:
    # Given a unique job that failed for good, and a new one of the same key waiting
    engine = create_store_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    dead = unique_job()
    store.insert([dead])
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == dead.id).values(status=JobStatus.FAILED.value, dead=True))
    [(waiting, created)] = store.insert([unique_job()])
    assert created and waiting.id != dead.id
    # When an operator requeues the dead letter, Then it runs again outside uniqueness, beside the waiting one
    [requeued] = store.requeue([dead.id], dead_only=True)
    assert requeued.status is JobStatus.QUEUED and requeued.unique_key is None
    engine.dispose()

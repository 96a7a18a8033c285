"""The status writer's group commit: a write the store refuses fails alone, the rest commit at once."""

from __future__ import annotations

import time

from sqlalchemy import text

from services.worker.status_writer import StatusWriter
from shared.job import JobStatus
from shared.store.attempts import FinishRequest
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from tests.shared.store.test_engine import write_lock_held_elsewhere
from tests.shared.store.test_jobs import make_job

OWNER = "writer-under-test"


def test_a_refused_finish_is_recorded_failed_and_the_others_of_its_batch_commit(sqlite_url: str) -> None:
    # Given three running jobs of this worker
    engine = create_store_engine(sqlite_url, timeout_s=0.2)
    migrate(engine)
    store = JobStore(engine)
    jobs = [make_job() for _ in range(3)]
    store.insert(jobs)
    for job in jobs:
        store.claim(job.id, owner=OWNER, lease_s=30)
    writer = StatusWriter(store)
    try:
        # When their finishes reach the writer together (held back by a lock, so they commit as one
        # batch), one of them carrying a value the store cannot encode
        with write_lock_held_elsewhere(sqlite_url):
            poison = writer.finish_later(FinishRequest(jobs[0].id, OWNER, JobStatus.SUCCEEDED, result={"x": object()}))
            fine = [
                writer.finish_later(FinishRequest(job.id, OWNER, JobStatus.SUCCEEDED, result=f"ok {job.id}"))
                for job in jobs[1:]
            ]
            time.sleep(0.3)
        started = time.monotonic()
        # Then the others commit within a second, and the refused one is recorded failed, not retried forever
        assert all(future.result(timeout=5) for future in fine)
        assert poison.result(timeout=5) is True
        assert time.monotonic() - started < 1.0
        for job in jobs[1:]:
            assert store.get(job.id).status is JobStatus.SUCCEEDED and store.get(job.id).result == f"ok {job.id}"
        refused = store.get(jobs[0].id)
        assert refused.status is JobStatus.FAILED and refused.error
        assert refused.error["type"] == "OutcomeNotStored" and refused.error["retryable"] is False
    finally:
        writer.stop()


def test_a_finish_on_a_connection_the_server_dropped_commits_on_a_fresh_one(required_postgres_url: str) -> None:
    # Given the worker's status writer on PostgreSQL (no ping at checkout) and two running jobs
    engine = create_store_engine(required_postgres_url, pool_size=1, pre_ping=False)
    migrate(engine)
    store = JobStore(engine)
    jobs = [make_job() for _ in range(2)]
    store.insert(jobs)
    for job in jobs:
        store.claim(job.id, owner=OWNER, lease_s=30)
    writer = StatusWriter(store)
    admin = create_store_engine(required_postgres_url)
    try:
        assert writer.finish_later(FinishRequest(jobs[0].id, OWNER, JobStatus.SUCCEEDED)).result(timeout=10)
        # When the server drops the pooled connection (a restart, a proxy's timeout)
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
        # Then the next finish fails on it once and commits on a fresh connection
        assert writer.finish_later(FinishRequest(jobs[1].id, OWNER, JobStatus.SUCCEEDED)).result(timeout=10)
        assert [store.get(job.id).status for job in jobs] == [JobStatus.SUCCEEDED] * 2
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != backend
    finally:
        writer.stop()
        admin.dispose()
        engine.dispose()

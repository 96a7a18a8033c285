"""The status writer's group commit: a write the store refuses fails alone, the rest commit at once."""

from __future__ import annotations

import time

from sqlalchemy import text

from services.worker.callbacks import Callbacks
from services.worker.status_writer import StatusWriter
from shared.ids import new_id
from shared.job import Job, JobStatus
from shared.store.attempts import FinishRequest
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from tests.services.worker.test_callbacks import callback_catalog
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


def _writer_with_callbacks(sqlite_url: str) -> tuple[JobStore, StatusWriter, list[Job]]:
    """A store, and a writer whose callbacks are those of ``callback_catalog``, publishing into a list."""
    engine = create_store_engine(sqlite_url)
    migrate(engine)
    store = JobStore(engine)
    catalog = callback_catalog()
    registry = TaskRegistry(engine, cache_s=0)
    registry.register(catalog.specs(), registered_by="tests")
    published: list[Job] = []
    callbacks = Callbacks(catalog, registry, publish=published.extend, outbox_sent=store.outbox_sent)
    return store, StatusWriter(store, callbacks=callbacks), published


def _running(store: JobStore, task: str, args: dict[str, object]) -> Job:
    job = make_job(task=task, args=args)
    store.insert([job])
    store.claim(job.id, owner=OWNER, lease_s=30)
    return job


def test_an_outcome_the_store_refuses_is_recorded_failed_with_its_on_failure_callback(sqlite_url: str) -> None:
    store, writer, published = _writer_with_callbacks(sqlite_url)
    # Given a running job whose task has an on_failure callback
    job = _running(store, "cb.works", {"value": 1})
    try:
        # When its success carries a result the store cannot encode (the writer's fallback path)
        done = writer.finish_later(FinishRequest(job.id, OWNER, JobStatus.SUCCEEDED, result={"x": object()}))
        assert done.result(timeout=10) is True
    finally:
        writer.stop()
    # Then it is failed for good, and its on_failure callback was written in that commit and published
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error and failed.error["type"] == "OutcomeNotStored"
    assert failed.callback_job_id is not None and failed.callback_error is None
    callback = store.get(failed.callback_job_id)
    assert callback.task == "cb.record" and callback.args == {"job_id": job.id, "error": failed.error}
    assert [sent.id for sent in published] == [callback.id]


def test_a_failure_whose_callback_the_store_refuses_is_recorded_alone_saying_why(sqlite_url: str) -> None:
    store, writer, published = _writer_with_callbacks(sqlite_url)
    job = _running(store, "cb.refused", {})
    unstorable = make_job(task="cb.record", args={"job_id": job.id, "error": object()})
    error = {"type": "Refused", "message": "no", "retryable": False}
    try:
        # When a failure for good comes with a callback row the store refuses
        request = FinishRequest(
            job.id, OWNER, JobStatus.FAILED, error=error, callback=unstorable, callback_outbox_id=new_id()
        )
        assert writer.finish_later(request).result(timeout=10) is True
    finally:
        writer.stop()
    # Then the failure stands, no callback job exists, and the job says why
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error == error and failed.callback_job_id is None
    assert failed.callback_error == (
        "callback 'cb.record' not submitted: the store refused it: TypeError: "
        "Object of type object is not JSON serializable"
    )
    assert published == []

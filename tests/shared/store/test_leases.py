"""Claims and leases (``shared/store/leases.py``) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from shared.ids import new_id
from shared.job import JobStatus, utcnow
from shared.store.attempts import ClaimOutcome
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def test_claim_then_duplicate_then_finish(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    claim = store.claim(job.id, owner="w1", lease_s=30)
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.job and claim.job.attempts == 1
    # A second delivery while the lease is live is a duplicate.
    assert store.claim(job.id, owner="w2", lease_s=30).outcome is ClaimOutcome.DUPLICATE
    assert store.finish(job.id, owner="w1", status=JobStatus.SUCCEEDED, result="hi")
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == "hi" and done.finished_at is not None
    # A delivery after the end is a duplicate too.
    assert store.claim(job.id, owner="w2", lease_s=30).outcome is ClaimOutcome.DUPLICATE


def test_finish_by_a_worker_that_lost_its_lease_is_refused(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    store.claim(job.id, owner="w1", lease_s=30)
    store.release_leases_of(["w1"])
    assert store.claim(job.id, owner="w2", lease_s=30).outcome is ClaimOutcome.CLAIMED
    assert not store.finish(job.id, owner="w1", status=JobStatus.SUCCEEDED)
    assert store.get(job.id).attempts == 2


def test_claim_of_an_old_job_expires_it(store: JobStore) -> None:
    job = make_job(max_age_s=1.0, created_at=utcnow() - timedelta(seconds=5))
    store.insert([job])
    assert store.claim(job.id, owner="w", lease_s=30).outcome is ClaimOutcome.EXPIRED
    expired = store.get(job.id)
    assert expired.status is JobStatus.EXPIRED and expired.error and expired.error["type"] == "Expired"


def test_claim_of_missing_job(store: JobStore) -> None:
    assert store.claim(new_id(), owner="w", lease_s=30).outcome is ClaimOutcome.MISSING


def test_progress_is_recorded_only_while_running(store: JobStore) -> None:
    job = make_job()
    store.insert([job])
    store.report_progress(job.id, {"current": 1, "total": 2, "message": "x"})
    assert store.get(job.id).progress is None
    store.claim(job.id, owner="w", lease_s=30)
    store.report_progress(job.id, {"current": 1, "total": 2, "message": "x"})
    assert store.get(job.id).progress == {"current": 1, "total": 2, "message": "x"}


def test_a_deferral_is_written_for_a_waiting_job_only_and_cleared_by_its_claim(store: JobStore) -> None:
    waiting, running = make_job(), make_job()
    store.insert([waiting, running])
    store.claim(running.id, owner="w1", lease_s=30)

    assert store.defer(waiting.id, {"reason": "rate_limit", "until_ms": 1_000}, scheduled=True)
    assert not store.defer(running.id, {"reason": "rate_limit", "until_ms": 1_000}, scheduled=True)

    row = store.get(waiting.id)
    assert row.status is JobStatus.SCHEDULED and row.deferred == {"reason": "rate_limit", "until_ms": 1_000}
    assert store.get(running.id).status is JobStatus.RUNNING
    store.claim(waiting.id, owner="w1", lease_s=30)
    assert store.get(waiting.id).deferred is None

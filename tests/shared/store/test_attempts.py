"""The worker's batched writes (claims, finishes, give-backs) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from shared.job import JobStatus, rfc3339, utcnow
from shared.store.attempts import ClaimOutcome, ClaimRequest, FinishRequest, attempt_views
from shared.store.jobs import JobStore
from tests.shared.store.test_jobs import make_job


def test_a_batch_claims_each_job_once_and_reports_every_outcome(store: JobStore) -> None:
    # Given a waiting job, a finished one, a cancelled one and an id with no row
    waiting, finished, cancelled = make_job(), make_job(), make_job()
    store.insert([waiting, finished, cancelled])
    store.claim(finished.id, owner="w0", lease_s=30)
    store.finish(finished.id, owner="w0", status=JobStatus.SUCCEEDED)
    store.cancel(cancelled.id)
    ids = [waiting.id, waiting.id, finished.id, cancelled.id, "no-such-job"]
    # When one batch claims them all (the waiting job twice, as after a duplicate delivery)
    claims, _ = store.commit_batch([ClaimRequest(i, "w1", 30) for i in ids], [])
    # Then the first claim wins, the rest say why not, and the row shows the one attempt
    assert [c.outcome for c in claims] == [
        ClaimOutcome.CLAIMED,
        ClaimOutcome.DUPLICATE,
        ClaimOutcome.DUPLICATE,
        ClaimOutcome.DUPLICATE,
        ClaimOutcome.MISSING,
    ]
    row = store.get(waiting.id)
    assert row.status is JobStatus.RUNNING and row.attempts == 1 and row.lease_owner == "w1"
    assert claims[0].job is not None and claims[0].job.attempts == 1 and claims[0].job.started_at == row.started_at


def test_finishes_in_one_batch_say_which_lost_their_lease(store: JobStore) -> None:
    # Given three running jobs, one of which another worker took over after w1's lease was released
    jobs = [make_job() for _ in range(3)]
    store.insert(jobs)
    for job in jobs:
        store.claim(job.id, owner="w1", lease_s=30)
    store.release_leases_of(["w1"])
    store.claim(jobs[1].id, owner="w2", lease_s=30)
    # When w1 finishes all three in one batch: two plain successes and one with a result
    finishes = [
        FinishRequest(jobs[0].id, "w1", JobStatus.SUCCEEDED),
        FinishRequest(jobs[1].id, "w1", JobStatus.SUCCEEDED),
        FinishRequest(jobs[2].id, "w1", JobStatus.SUCCEEDED, result={"n": 2}),
    ]
    _, done = store.commit_batch([], finishes)
    # Then the job w1 lost is refused and left to w2; the others are recorded
    assert done == [True, False, True]
    assert store.get(jobs[0].id).status is JobStatus.SUCCEEDED
    assert store.get(jobs[1].id).status is JobStatus.RUNNING and store.get(jobs[1].id).lease_owner == "w2"
    assert store.get(jobs[2].id).result == {"n": 2}


def test_unclaim_gives_back_only_the_owners_running_claims(store: JobStore) -> None:
    # Given a job claimed by w1, one claimed by w2, and one w1 already finished
    mine, theirs, done = make_job(), make_job(attempts=2), make_job()
    store.insert([mine, theirs, done])
    store.claim(mine.id, owner="w1", lease_s=30)
    store.claim(theirs.id, owner="w2", lease_s=30)
    store.claim(done.id, owner="w1", lease_s=30)
    store.finish(done.id, owner="w1", status=JobStatus.SUCCEEDED)
    # When w1 gives back all three (their messages go back to the queue unstarted)
    assert store.unclaim("w1", [mine.id, theirs.id, done.id]) == 1
    # Then only w1's running claim is queued again, its attempt not counted
    back = store.get(mine.id)
    assert back.status is JobStatus.QUEUED and back.attempts == 0 and back.lease_owner is None
    assert store.get(theirs.id).lease_owner == "w2" and store.get(theirs.id).attempts == 3
    assert store.get(done.id).status is JobStatus.SUCCEEDED
    assert store.claim(mine.id, owner="w3", lease_s=30).outcome is ClaimOutcome.CLAIMED


def test_a_claim_of_a_job_the_same_owner_holds_says_so(store: JobStore) -> None:
    # Given a job w1 claimed (its answer lost, say) and still holds under a live lease
    job = make_job()
    store.insert([job])
    store.claim(job.id, owner="w1", lease_s=30)
    # When w1 claims it again, and w2 tries
    again = store.claim(job.id, owner="w1", lease_s=30)
    other = store.claim(job.id, owner="w2", lease_s=30)
    # Then w1 learns it holds the job already (no second attempt counted); w2 sees a duplicate
    assert again.outcome is ClaimOutcome.OWNED and again.job is not None and again.job.attempts == 1
    assert other.outcome is ClaimOutcome.DUPLICATE
    assert store.get(job.id).attempts == 1


def _run_attempt(store: JobStore, job_id: str, owner: str, status: JobStatus, **fields: object) -> bool:
    """Claim the job for one attempt and finish it as the worker does (attempt number and start given)."""
    [claim], _ = store.commit_batch([ClaimRequest(job_id, owner, 30)], [])
    assert claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None
    request = FinishRequest(
        job_id,
        owner,
        status,
        attempt=claim.job.attempts,
        started_at=claim.job.started_at,
        **fields,  # type: ignore[arg-type]
    )
    return store.commit_batch([], [request])[1][0]


def test_each_ended_attempt_is_recorded_with_its_finish_and_shown_with_its_backoff(store: JobStore) -> None:
    # Given a job that fails once (retried after a backoff), then succeeds on another worker
    job = make_job()
    store.insert([job])
    error = {"type": "OSError", "message": "down", "retryable": True, "traceback": "Traceback ..."}
    retry_at = utcnow() + timedelta(seconds=5)
    assert _run_attempt(store, job.id, "w1", JobStatus.RETRYING, error=error, next_attempt_at=retry_at)
    assert _run_attempt(store, job.id, "w2", JobStatus.SUCCEEDED, result="ok")
    # When its history is read and shown
    rows = store.attempt_history(job.id)
    views = attempt_views(rows)
    # Then each attempt has its worker, times, outcome and error; the traceback only when asked
    assert [(v["attempt"], v["worker"], v["outcome"]) for v in views] == [(1, "w1", "retrying"), (2, "w2", "succeeded")]
    assert views[0]["error"] == {"type": "OSError", "message": "down", "retryable": True}
    assert attempt_views(rows, traceback=True)[0]["error"] == error
    assert views[0]["next_attempt_at"] == rfc3339(retry_at) and views[1]["next_attempt_at"] is None
    assert views[1]["error"] is None
    first, second = rows
    assert views[0]["backoff_s"] == round((second["started_at"] - first["finished_at"]).total_seconds(), 3)
    assert views[1]["backoff_s"] is None
    assert views[1]["duration_s"] == round((second["finished_at"] - second["started_at"]).total_seconds(), 3)
    assert second["started_at"] == store.get(job.id).started_at


def test_a_finish_that_lost_its_lease_leaves_no_attempt_row(store: JobStore) -> None:
    # Given a job w1 claimed, whose lease passed to w2
    job = make_job()
    store.insert([job])
    [claim], _ = store.commit_batch([ClaimRequest(job.id, "w1", 30)], [])
    assert claim.job is not None
    store.release_leases_of(["w1"])
    store.claim(job.id, owner="w2", lease_s=30)
    # When w1's late finish arrives
    late = FinishRequest(job.id, "w1", JobStatus.SUCCEEDED, attempt=1, started_at=claim.job.started_at)
    assert store.commit_batch([], [late])[1] == [False]
    # Then the history holds nothing of it (w2's attempt is still running)
    assert store.attempt_history(job.id) == []

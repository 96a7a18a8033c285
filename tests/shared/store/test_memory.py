"""The in-memory twin of the job store: the same calls give the same answers and rows as on SQL (SQLite).

Time-dependent rules (lease expiry, max age) are checked on the twin alone with a
``FakeClock``: the SQL store reads the real clock.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from shared.clock import FakeClock
from shared.errors import JobrelayError
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest, FinishRequest
from shared.store.engine import create_store_engine, migrate
from shared.store.jobs import JobStore
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job

Store = JobStore | MemoryJobStore


@contextlib.contextmanager
def sql_store(url: str) -> Iterator[JobStore]:
    engine = create_store_engine(url)
    migrate(engine)
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "memory"])
def either(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Store]:
    """Each test here runs on the SQL store and on its twin, with the same expectations."""
    if request.param == "memory":
        yield MemoryJobStore()
        return
    with sql_store(sqlite_url) as store:
        yield store


def test_claim_outcomes(either: Store) -> None:
    # Given a waiting job, one past its max age, and a running one an operator asked to cancel
    waiting, old, doomed = make_job(), make_job(max_age_s=1.0, created_at=utcnow() - timedelta(seconds=5)), make_job()
    either.insert([waiting, old, doomed])
    either.claim(doomed.id, owner="w1", lease_s=30)
    either.cancel(doomed.id)
    # Then each claim says what it found
    claimed = either.claim(waiting.id, owner="w1", lease_s=30)
    assert claimed.outcome is ClaimOutcome.CLAIMED and claimed.job is not None and claimed.job.attempts == 1
    assert either.claim(waiting.id, owner="w1", lease_s=30).outcome is ClaimOutcome.OWNED
    assert either.claim(waiting.id, owner="w2", lease_s=30).outcome is ClaimOutcome.DUPLICATE
    assert either.claim(old.id, owner="w1", lease_s=30).outcome is ClaimOutcome.EXPIRED
    assert either.claim(doomed.id, owner="w2", lease_s=30).outcome is ClaimOutcome.CANCELLED
    assert either.claim(new_id(), owner="w1", lease_s=30).outcome is ClaimOutcome.MISSING
    # And the rows show it: one attempt of the claimed job, the others final without a lease
    assert either.get(waiting.id).lease_owner == "w1"
    for job, status in ((old, JobStatus.EXPIRED), (doomed, JobStatus.CANCELLED)):
        row = either.get(job.id)
        assert row.status is status and row.lease_owner is None and row.finished_at is not None


def test_a_batch_decides_every_claim_on_the_rows_as_they_were(either: Store) -> None:
    # Given a waiting job and a cancelled-while-waiting one
    waiting, cancelled = make_job(), make_job()
    either.insert([waiting, cancelled])
    either.cancel(cancelled.id)
    # When one batch claims the waiting job twice and finishes nothing it holds
    requests = [ClaimRequest(waiting.id, "w1", 30), ClaimRequest(waiting.id, "w2", 30)]
    claims, done = either.commit_batch(requests, [FinishRequest(cancelled.id, "w1", JobStatus.SUCCEEDED)])
    # Then the first claim wins, the second is a duplicate, and the finish is refused
    assert [c.outcome for c in claims] == [ClaimOutcome.CLAIMED, ClaimOutcome.DUPLICATE] and done == [False]
    assert either.get(waiting.id).attempts == 1


def test_finish_writes_only_under_the_owners_lease(either: Store) -> None:
    jobs = [make_job() for _ in range(4)]
    either.insert(jobs)
    for job in jobs:
        either.claim(job.id, owner="w1", lease_s=30)
    later = utcnow() + timedelta(seconds=5)
    assert not either.finish(jobs[0].id, owner="w2", status=JobStatus.SUCCEEDED)
    assert either.finish(jobs[0].id, owner="w1", status=JobStatus.SUCCEEDED, result={"n": 1})
    assert either.finish(jobs[1].id, owner="w1", status=JobStatus.RETRYING, error={"x": 1}, next_attempt_at=later)
    assert either.finish(jobs[2].id, owner="w1", status=JobStatus.FAILED, error={"x": 2})
    assert not either.finish(jobs[0].id, owner="w1", status=JobStatus.SUCCEEDED)
    succeeded, retrying, failed = (either.get(job.id) for job in jobs[:3])
    assert succeeded.result == {"n": 1} and succeeded.finished_at is not None and succeeded.lease_owner is None
    assert retrying.status is JobStatus.RETRYING and retrying.finished_at is None and retrying.next_attempt_at
    assert failed.dead and failed.error == {"x": 2}
    # A worker whose lease was released finishes nothing once another claimed the job
    either.release_leases_of(["w1"])
    assert either.claim(jobs[3].id, owner="w2", lease_s=30).outcome is ClaimOutcome.CLAIMED
    assert not either.finish(jobs[3].id, owner="w1", status=JobStatus.SUCCEEDED)


def test_unclaim_renew_progress_cancel_flags_and_undelivered(either: Store) -> None:
    # Given three jobs claimed by w1 and one by w2
    mine, also_mine, flagged, theirs = jobs = [make_job() for _ in range(4)]
    either.insert(jobs)
    for job in (mine, also_mine, flagged):
        either.claim(job.id, owner="w1", lease_s=30)
    either.claim(theirs.id, owner="w2", lease_s=30)
    # Then w1 gives back only its own running claims, uncounted
    assert either.unclaim("w1", [mine.id, theirs.id, mine.id]) == 1
    row = either.get(mine.id)
    assert row.status is JobStatus.QUEUED and row.attempts == 0 and row.lease_owner is None
    # A renewal touches only the owner's leases
    before = either.get(theirs.id).lease_expires_at
    either.renew_leases("w1", [also_mine.id, theirs.id], lease_s=60)
    assert either.get(theirs.id).lease_expires_at == before
    assert (either.get(also_mine.id).lease_expires_at or utcnow()) > utcnow() + timedelta(seconds=50)
    # Progress is kept only while running; the cancel flag is read back
    either.report_progress(mine.id, {"current": 1})
    either.report_progress(also_mine.id, {"current": 2})
    assert either.get(mine.id).progress is None and either.get(also_mine.id).progress == {"current": 2}
    either.cancel(flagged.id)
    assert either.cancel_requested_among([mine.id, flagged.id, theirs.id]) == [flagged.id]
    # An undeliverable message fails its job for good, once
    assert either.fail_undelivered(theirs.id, {"type": "ActorNotFound"})
    assert not either.fail_undelivered(theirs.id, {"type": "ActorNotFound"})
    dead = either.get(theirs.id)
    assert dead.status is JobStatus.FAILED and dead.dead and dead.lease_owner is None


def test_what_the_relay_and_the_reconciler_read(either: Store) -> None:
    # Given a row written unpublished, one due in a month, and two under an outbox entry (one cancelled)
    now = utcnow()
    old, far = make_job(created_at=now - timedelta(seconds=10)), make_job(scheduled_for=now + timedelta(days=30))
    either.insert([old, far])
    handed, cancelled = make_job(), make_job()
    entry = new_id()
    either.insert([handed, cancelled], outbox_id=entry)
    either.cancel(cancelled.id)
    soon = utcnow() + timedelta(seconds=1)
    # Then the relay finds the unpublished rows (the far one only without a horizon) and the entry's waiting job
    assert [job.id for job in either.unpublished(older_than=soon)] == [old.id, far.id]
    assert [job.id for job in either.unpublished(older_than=soon, due_before=soon + timedelta(days=6))] == [old.id]
    assert [(found, [job.id for job in waiting]) for found, waiting in either.outbox_left(older_than=soon)] == [
        (entry, [handed.id])
    ]
    # And once it sent them, nothing is left but the published jobs waiting for a worker
    either.mark_published([old.id])
    either.outbox_sent([entry])
    assert [job.id for job in either.unpublished(older_than=soon)] == [far.id]
    assert either.outbox_left(older_than=soon) == []
    assert [job.id for job in either.waiting_published(older_than=soon)] == [old.id, handed.id]


def test_insert_answers_a_repeated_key_with_the_stored_job(either: Store) -> None:
    first = make_job(idempotency_key="k", request_hash="h")
    either.insert([first])
    [(again, created)] = either.insert([make_job(idempotency_key="k", request_hash="h")])
    assert not created and again.id == first.id
    with pytest.raises(JobrelayError):
        either.insert([make_job(), make_job(idempotency_key="k", request_hash="other")])


def test_a_finish_in_the_batch_that_cancels_its_job_is_refused(either: Store) -> None:
    # Given a job w1 runs, which an operator asked to cancel
    job = make_job()
    either.insert([job])
    either.claim(job.id, owner="w1", lease_s=30)
    either.cancel(job.id)
    # When one batch holds a duplicate delivery's claim of it (which cancels it) and w1's finish
    claims, done = either.commit_batch(
        [ClaimRequest(job.id, "w1", 30)], [FinishRequest(job.id, "w1", JobStatus.SUCCEEDED)]
    )
    # Then the job is cancelled, and the finish says it did not land
    assert claims[0].outcome is ClaimOutcome.CANCELLED and either.get(job.id).status is JobStatus.CANCELLED
    assert done == [False]


# -- the same random calls on both stores -------------------------------------

OWNERS = ("w1", "w2")


def shape(value: Any) -> Any:
    """A call's answer without its times (the two stores read the clock at different moments)."""
    if isinstance(value, Claim):
        return value.outcome, shape(value.job)
    if isinstance(value, Job):
        times = (value.lease_expires_at, value.started_at, value.finished_at, value.next_attempt_at)
        return (
            value.id,
            value.status,
            value.attempts,
            value.lease_owner,
            tuple(moment is None for moment in times),
            value.published_at is None,
            value.cancel_requested,
            value.dead,
            value.progress,
            value.result,
            value.error,
        )
    if isinstance(value, tuple | list):
        return [shape(item) for item in value]
    return value


def random_call(rng: random.Random, ids: list[str]) -> Callable[[Store], Any]:
    """One call of the worker's or the housekeeping's, with random arguments."""
    job_id, owner = rng.choice(ids), rng.choice(OWNERS)
    some = rng.sample(ids, rng.randint(0, 3))
    status = rng.choice([JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.FAILED, JobStatus.CANCELLED])
    soon = utcnow() + timedelta(seconds=1)
    # NOTE: the finish's job is not among the claims: see test_a_finish_in_the_batch_that_cancels_its_job.
    batch = [ClaimRequest(i, owner, 30) for i in some if i != job_id], [FinishRequest(job_id, owner, status)]
    # (weight, call): claims and finishes most, the calls that end a job for good seldom.
    calls: list[tuple[float, Callable[[Store], Any]]] = [
        (6, lambda s: s.claim(job_id, owner=owner, lease_s=30)),
        (3, lambda s: s.finish(job_id, owner=owner, status=status, result=[1], error={"e": 1}, next_attempt_at=soon)),
        (2, lambda s: s.commit_batch(*batch)),
        (2, lambda s: s.unclaim(owner, some)),
        (1, lambda s: s.renew_leases(owner, some, lease_s=30)),
        (1, lambda s: s.release_leases_of([owner])),
        (1, lambda s: s.report_progress(job_id, {"at": owner})),
        (0.3, lambda s: s.fail_undelivered(job_id, {"type": "DecodeError"})),
        (1, lambda s: sorted(s.cancel_requested_among(ids))),
        (1, lambda s: s.mark_published(some)),
        (1, lambda s: (s.unpublished(older_than=soon), s.waiting_published(older_than=soon))),
        (0.5, lambda s: s.cancel(job_id)),
    ]
    [(_, call)] = rng.choices(calls, weights=[weight for weight, _ in calls])
    return call


@pytest.mark.parametrize("seed", range(4))
def test_random_calls_give_the_same_answers_and_rows(sqlite_url: str, seed: int) -> None:
    # Given the same jobs on both stores (one past its max age, one unknown id)
    jobs = [make_job(published_at=utcnow()) for _ in range(4)]
    jobs += [make_job(), make_job(max_age_s=1.0, created_at=utcnow() - timedelta(seconds=5))]
    ids = [job.id for job in jobs] + [new_id()]
    with sql_store(sqlite_url) as sql:
        memory = MemoryJobStore()
        for store in (sql, memory):
            store.insert([make_job(**vars(job)) for job in jobs])
        # When the same random calls are made on both, then each call answers the same
        rng = random.Random(seed)
        for step in range(80):
            call = random_call(rng, ids)
            answers = []
            for store in (sql, memory):
                try:
                    answers.append(shape(call(store)))
                except JobrelayError as exc:
                    answers.append(type(exc).__name__)
            assert answers[0] == answers[1], f"step {step}"
        # And the rows end the same
        for job_id in ids[:-1]:
            assert shape(sql.get(job_id)) == shape(memory.get(job_id))


# -- time, on the twin with a fake clock ---------------------------------------


def test_a_lease_runs_out_at_its_time_unless_renewed() -> None:
    # Given a job claimed by w1 for 30 s
    clock = FakeClock()
    store = MemoryJobStore(clock)
    job = make_job(created_at=clock.now())
    store.insert([job])
    claimed = store.claim(job.id, owner="w1", lease_s=30)
    assert claimed.job is not None and claimed.job.lease_expires_at == clock.now() + timedelta(seconds=30)
    # When 20 s pass and w1 renews, then 20 s more
    clock.advance(20)
    store.renew_leases("w1", [job.id], lease_s=30)
    clock.advance(20)
    # Then the job is still w1's
    assert store.claim(job.id, owner="w2", lease_s=30).outcome is ClaimOutcome.DUPLICATE
    # When w1 stops renewing and the lease runs out
    clock.advance(10)
    # Then another worker claims it for a second attempt, and w1's finish is refused
    again = store.claim(job.id, owner="w2", lease_s=30)
    assert again.outcome is ClaimOutcome.CLAIMED and again.job is not None and again.job.attempts == 2
    assert again.job.started_at == clock.now()
    assert not store.finish(job.id, owner="w1", status=JobStatus.SUCCEEDED)


def test_a_job_expires_once_it_waited_longer_than_its_max_age() -> None:
    clock = FakeClock()
    store = MemoryJobStore(clock)
    young, waited = make_job(created_at=clock.now(), max_age_s=10.0), make_job(created_at=clock.now(), max_age_s=10.0)
    store.insert([young, waited])
    clock.advance(10)
    assert store.claim(young.id, owner="w", lease_s=30).outcome is ClaimOutcome.CLAIMED
    clock.advance(0.001)
    assert store.claim(waited.id, owner="w", lease_s=30).outcome is ClaimOutcome.EXPIRED
    assert store.get(waited.id).finished_at == clock.now()


def test_a_deferral_shows_while_the_job_waits_and_its_claim_clears_it(either: Store) -> None:
    # Given a waiting job, another one, a running one and a finished one
    waiting, other, running, done = jobs = [make_job() for _ in range(4)]
    either.insert(jobs)
    either.claim(running.id, owner="w1", lease_s=30)
    either.claim(done.id, owner="w1", lease_s=30)
    either.finish(done.id, owner="w1", status=JobStatus.SUCCEEDED)
    # When a flow limit defers the waiting ones
    assert either.defer(waiting.id, {"reason": "rate_limit", "until_ms": 123}, scheduled=True)
    assert either.defer(other.id, {"reason": "concurrency", "until_ms": None}, scheduled=False)
    # Then: a rate deferral is scheduled until then, a concurrency wait stays queued; both show why
    row = either.get(waiting.id)
    assert row.status is JobStatus.SCHEDULED
    assert row.to_api()["deferred"] == {"reason": "rate_limit", "until": "1970-01-01T00:00:00.123Z"}
    assert either.get(other.id).status is JobStatus.QUEUED
    assert either.get(other.id).to_api()["deferred"] == {"reason": "concurrency", "until": None}
    # A running or final job is left alone
    assert not either.defer(running.id, {"reason": "rate_limit", "until_ms": 1}, scheduled=True)
    assert not either.defer(done.id, {"reason": "rate_limit", "until_ms": 1}, scheduled=True)
    assert either.get(running.id).status is JobStatus.RUNNING and either.get(running.id).deferred is None
    # Its claim clears it
    claim = either.claim(waiting.id, owner="w1", lease_s=30)
    assert claim.job is not None and claim.job.deferred is None
    assert either.get(waiting.id).deferred is None and either.get(waiting.id).to_api()["deferred"] is None

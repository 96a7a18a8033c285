"""Claims made before messages are handed out: how many, and what happens to them and to their rows."""

from __future__ import annotations

import threading

import dramatiq
import pytest

from services.worker.reservations import MAX_ROUNDS_AHEAD, SHORT_JOB_S, Reservations
from shared.clock import FakeClock
from shared.job import Job, JobStatus, utcnow
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest
from shared.store.memory import MemoryJobStore
from tests.shared.store.test_jobs import make_job


def message(n: int) -> dramatiq.Message[object]:
    return dramatiq.Message(
        queue_name="q", actor_name="t", args=(), kwargs={}, options={"redis_message_id": f"r{n}"}, message_id=f"j{n}"
    )


class Book:
    """What the store saw: every batch of claims and every give-back."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.given_back: list[list[str]] = []
        self.busy = 0
        self.fail = False

    def claim_many(self, requests: list[ClaimRequest]) -> list[Claim]:
        if self.fail:
            raise ConnectionError("store away")
        self.batches.append([r.job_id for r in requests])
        now = utcnow()
        return [
            Claim(
                ClaimOutcome.CLAIMED,
                Job(
                    id=r.job_id,
                    task="t",
                    queue="q",
                    status=JobStatus.RUNNING,
                    args={},
                    max_retries=0,
                    created_at=now,
                    updated_at=now,
                ),
            )
            for r in requests
        ]


@pytest.fixture
def book() -> Book:
    return Book()


def reservations(book: Book, threads: int = 4) -> Reservations:
    made = Reservations(
        claim_many=book.claim_many,
        unclaim=book.given_back.append,
        busy=lambda: book.busy,
        owner="w1",
        lease_s=30,
    )
    made.threads = threads
    return made


def test_short_jobs_get_a_round_of_claims_ahead_in_one_commit(book: Book) -> None:
    # Given 4 threads, 1 busy, and jobs seen to run short
    book.busy = 1
    ahead = reservations(book)
    for _ in range(200):
        ahead.observe(0.001)
    # When 10 fetched messages ask to go out
    ready = ahead.ready([message(n) for n in range(10)])
    # Then the idle 3 plus a round of 4 are claimed in one commit and may go out
    assert ready == 7 and book.batches == [[f"j{n}" for n in range(7)]]
    assert sorted(ahead.job_ids()) == sorted(f"j{n}" for n in range(7))


def test_slow_claim_commits_get_more_rounds_of_claims_ahead(book: Book) -> None:
    # Given 4 idle threads running 1 ms jobs, and claim commits that take 3 ms (a clock moved by the commit)
    now = [0.0]

    def slow_claim_many(requests: list[ClaimRequest]) -> list[Claim]:
        now[0] += 0.003
        return book.claim_many(requests)

    ahead = Reservations(
        claim_many=slow_claim_many, unclaim=book.given_back.append, busy=lambda: 0, owner="w1", lease_s=30,
        clock=lambda: now[0],
    )  # fmt: skip
    ahead.threads = 4
    for _ in range(200):
        ahead.observe(0.001)
    for n in range(200):
        ahead.ready([message(n)])
        ahead.take(f"r{n}")
    # When 40 fetched messages ask to go out
    ready = ahead.ready([message(n) for n in range(1000, 1040)])
    # Then the threads' round plus the 3 rounds they run while a claim commits are claimed
    assert ahead.rounds_ahead() == 3 and ready == 16


def test_claims_ahead_stop_at_the_prefetch_however_slow_the_commit(book: Book) -> None:
    # Given 1 ms jobs and a claim commit seen to take a second
    now = [0.0]

    def stalled_claim_many(requests: list[ClaimRequest]) -> list[Claim]:
        now[0] += 1.0
        return book.claim_many(requests)

    ahead = Reservations(
        claim_many=stalled_claim_many, unclaim=book.given_back.append, busy=lambda: 0, owner="w1", lease_s=30,
        clock=lambda: now[0],
    )  # fmt: skip
    ahead.threads = 2
    for _ in range(200):
        ahead.observe(0.001)
    for n in range(50):
        ahead.ready([message(n)])
        ahead.take(f"r{n}")
    # Then at most MAX_ROUNDS_AHEAD rounds are claimed ahead of the running one
    assert ahead.rounds_ahead() == MAX_ROUNDS_AHEAD
    assert ahead.ready([message(n) for n in range(1000, 1100)]) == 2 * (1 + MAX_ROUNDS_AHEAD)


@pytest.mark.parametrize("seen", ["nothing yet", "long jobs"])
def test_long_jobs_get_claims_only_for_idle_threads(book: Book, seen: str) -> None:
    # Given no job seen yet, or jobs that ran long on average, and 3 of 4 threads busy
    ahead = reservations(book)
    if seen == "long jobs":
        for _ in range(200):
            ahead.observe(SHORT_JOB_S * 20)
    book.busy = 3
    # When messages ask to go out, then again with every thread taken
    assert ahead.ready([message(n) for n in range(5)]) == 1
    assert ahead.ready([message(n) for n in range(1, 5)]) == 0
    # Then one claim was made, for the one idle thread
    assert book.batches == [["j0"]]


def test_messages_needing_no_claim_go_out_without_a_commit(book: Book) -> None:
    # Given every thread busy on long jobs
    ahead = reservations(book)
    ahead.observe(10.0)
    book.busy = 4
    # When the leading messages need no claim (undecodable, delayed, unknown task)
    assert ahead.ready([None, None, message(1), None]) == 2
    # Then those go out and the claimable one waits, unclaimed
    assert book.batches == []


def test_a_failed_commit_lets_every_message_through_unclaimed(book: Book) -> None:
    # Given a store that refuses the commit
    ahead = reservations(book)
    book.fail = True
    # When messages ask to go out
    ready = ahead.ready([message(n) for n in range(3)])
    # Then they all go out (each thread claims its own job, waiting out the outage there)
    assert ready == 3 and ahead.job_ids() == [] and ahead.take("r0") is None


def test_a_claim_is_taken_once_by_the_thread_that_runs_its_message(book: Book) -> None:
    ahead = reservations(book)
    ahead.ready([message(1)])
    first = ahead.take("r1")
    assert first is not None and first.job is not None and first.job.id == "j1"
    assert ahead.take("r1") is None and ahead.job_ids() == []


def test_messages_going_back_give_back_their_claims(book: Book) -> None:
    # Given two claimed messages, one of which a thread took
    ahead = reservations(book)
    ahead.ready([message(1), message(2)])
    ahead.take("r1")
    # When Dramatiq puts both back on the queue (shutdown)
    ahead.give_back(["r1", "r2", "r-unknown"])
    # Then only the unstarted claim is given back
    assert book.given_back == [["j2"]] and ahead.job_ids() == []


def test_cancelled_claims_are_dropped_and_returned(book: Book) -> None:
    ahead = reservations(book)
    ahead.ready([message(1), message(2)])
    dropped = ahead.drop_jobs({"j2", "j9"})
    assert [c.job.id for c in dropped if c.job] == ["j2"]
    assert ahead.job_ids() == ["j1"] and ahead.take("r2") is None


def test_a_thread_freeing_up_wakes_a_waiting_consumer(book: Book) -> None:
    # Given a consumer waiting for room (every thread busy)
    ahead = reservations(book)
    book.busy = 8
    assert ahead.ready([message(1)]) == 0
    waiter = threading.Thread(target=ahead.wait, args=(60.0,))
    waiter.start()
    # When a thread finishes its job
    ahead.observe(0.001)
    # Then the consumer wakes (long before its 60 s timeout)
    waiter.join(timeout=10)
    assert not waiter.is_alive()


# -- on the store's twin: the claims ahead are rows held under a lease ----------


def reservations_on(store: MemoryJobStore, owner: str = "w1", threads: int = 4) -> Reservations:
    """Reservations claiming in ``store`` as the status writer and the claims middleware do."""
    made = Reservations(
        claim_many=lambda requests: store.commit_batch(requests, [])[0],
        unclaim=lambda job_ids: store.unclaim(owner, job_ids),
        busy=lambda: 0,
        owner=owner,
        lease_s=30,
    )
    made.threads = threads
    return made


def test_claims_ahead_hold_their_rows_until_given_back() -> None:
    # Given two waiting jobs
    store = MemoryJobStore()
    store.insert([make_job(id="j1"), make_job(id="j2")])
    ahead = reservations_on(store)
    # When both messages are claimed ahead, then put back on the queue before a thread took them
    assert ahead.ready([message(1), message(2)]) == 2
    assert [store.get(job_id).lease_owner for job_id in ("j1", "j2")] == ["w1", "w1"]
    ahead.give_back(["r1", "r2"])
    # Then the rows wait again, their attempt not counted, for any worker to claim
    for job_id in ("j1", "j2"):
        row = store.get(job_id)
        assert row.status is JobStatus.QUEUED and row.attempts == 0 and row.lease_owner is None
    assert store.claim("j1", owner="w2", lease_s=30).outcome is ClaimOutcome.CLAIMED


def test_a_claim_ahead_of_a_job_another_worker_runs_frees_its_room_at_once() -> None:
    # Given a job w2 runs, and one waiting
    store = MemoryJobStore()
    store.insert([make_job(id="j1"), make_job(id="j2")])
    store.claim("j1", owner="w2", lease_s=30)
    ahead = reservations_on(store)
    ahead.ready([message(1), message(2)])
    # When the threads take their claims
    duplicate = ahead.take("r1")
    # Then the duplicate delivery is told so, its room is free, and w2 keeps its job
    assert duplicate is not None and duplicate.outcome is ClaimOutcome.DUPLICATE
    assert ahead.job_ids() == ["j2"]
    ahead.give_back(["r1", "r2"])
    assert store.get("j1").lease_owner == "w2" and store.get("j2").lease_owner is None


def test_a_claim_ahead_keeps_its_lease_only_while_the_heartbeat_renews_it() -> None:
    # Given a job claimed ahead for 30 s, on a clock that moves only when told
    clock = FakeClock()
    store = MemoryJobStore(clock)
    store.insert([make_job(id="j1", created_at=clock.now())])
    ahead = reservations_on(store)
    ahead.ready([message(1)])
    # When its thread is slow to start it, and the heartbeat renews what is claimed here
    clock.advance(25)
    store.renew_leases("w1", ahead.job_ids(), lease_s=30)
    clock.advance(25)
    # Then no other worker can take it
    assert store.claim("j1", owner="w2", lease_s=30).outcome is ClaimOutcome.DUPLICATE
    # When the renewals stop (a stuck process) and the lease runs out
    clock.advance(6)
    # Then another worker claims it, and the stale claim's finish is refused
    assert store.claim("j1", owner="w2", lease_s=30).outcome is ClaimOutcome.CLAIMED
    assert not store.finish("j1", owner="w1", status=JobStatus.SUCCEEDED)


def test_a_job_cancelled_while_claimed_ahead_is_dropped_and_recorded_cancelled() -> None:
    # Given two jobs claimed ahead, one of which an operator cancels before it starts
    store = MemoryJobStore()
    store.insert([make_job(id="j1"), make_job(id="j2")])
    ahead = reservations_on(store)
    ahead.ready([message(1), message(2)])
    store.cancel("j2")
    # When the watchdog asks which reserved jobs were cancelled and drops them
    dropped = ahead.drop_jobs(set(store.cancel_requested_among(ahead.job_ids())))
    assert [claim.job.id for claim in dropped if claim.job] == ["j2"]
    # Then the worker can record it cancelled (it holds the lease), and its message skips at start
    assert store.finish("j2", owner="w1", status=JobStatus.CANCELLED)
    assert store.get("j2").status is JobStatus.CANCELLED and ahead.take("r2") is None
    assert ahead.job_ids() == ["j1"]

"""The held-jobs file: what a worker process's threads run and what it claimed ahead, readable after it died."""

from __future__ import annotations

import threading
from pathlib import Path

import dramatiq

from services.worker.held_jobs import Held, HeldJobs, held_jobs_path, read_held
from services.worker.reservations import Reservations
from shared.job import Job, JobStatus, utcnow
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest
from tests.shared.store.test_jobs import make_job


def in_thread(call: object) -> None:
    thread = threading.Thread(target=call)  # type: ignore[arg-type]
    thread.start()
    thread.join(timeout=10)


class WorkerThread:
    """A thread that enters a job's attempt and stays inside it until told to leave."""

    def __init__(self, held: HeldJobs, job_id: str) -> None:
        self._entered = threading.Event()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(held, job_id), daemon=True)
        self._thread.start()
        assert self._entered.wait(10)

    def _run(self, held: HeldJobs, job_id: str) -> None:
        held.enter(make_job(id=job_id))
        self._entered.set()
        self._leave.wait(30)
        held.leave()

    def leave(self) -> None:
        self._leave.set()
        self._thread.join(timeout=10)


def test_marks_are_read_back_as_they_stand(tmp_path: Path) -> None:
    path = held_jobs_path(tmp_path, "w1")
    held = HeldJobs(path)
    # Given jobs claimed ahead, one of which a thread takes, and one given back
    held.ahead(["j1", "j2", "j3"])
    first = WorkerThread(held, "j1")
    held.not_ahead(["j3"])
    # Then the file says j1 runs and j2 waits
    assert read_held(path) == Held(running=frozenset({"j1"}), ahead=frozenset({"j2"}))
    # And a second thread's job counts while it is inside, and no more once it is out
    second = WorkerThread(held, "j4")
    assert read_held(path) == Held(running=frozenset({"j1", "j4"}), ahead=frozenset({"j2"}))
    second.leave()
    assert read_held(path) == Held(running=frozenset({"j1"}), ahead=frozenset({"j2"}))
    first.leave()
    assert read_held(path) == Held(running=frozenset(), ahead=frozenset({"j2"}))


def test_the_file_grows_past_its_first_records(tmp_path: Path) -> None:
    path = held_jobs_path(tmp_path, "w1")
    held = HeldJobs(path)
    ids = [f"job-{n:04d}" for n in range(300)]
    held.ahead(ids)
    found = read_held(path)
    assert found is not None and found.ahead == frozenset(ids)


def test_no_file_when_it_cannot_be_kept(tmp_path: Path) -> None:
    # Given a data directory where no file can be made (a file stands where the folder would be)
    (tmp_path / "held-jobs").write_text("in the way")
    path = held_jobs_path(tmp_path, "w1")
    held = HeldJobs(path)
    # Then marking works (nothing is kept) and the supervisor finds no file: it recovers as before
    held.ahead(["j1"])
    held.enter(make_job(id="j1"))
    held.leave()
    assert read_held(path) is None


def _claim(request: ClaimRequest) -> Claim:
    now = utcnow()
    job = Job(
        id=request.job_id,
        task="t",
        queue="q",
        status=JobStatus.RUNNING,
        args={},
        max_retries=0,
        created_at=now,
        updated_at=now,
    )
    outcome = ClaimOutcome.DUPLICATE if request.job_id == "dup" else ClaimOutcome.CLAIMED
    return Claim(outcome, job)


def test_reservations_mark_claims_ahead_and_the_jobs_their_threads_take(tmp_path: Path) -> None:
    path = held_jobs_path(tmp_path, "w1")
    given_back: list[list[str]] = []
    reservations = Reservations(
        claim_many=lambda requests: [_claim(r) for r in requests],
        unclaim=given_back.append,
        busy=lambda: 0,
        owner="w1",
        lease_s=30,
        held=HeldJobs(path),
    )
    reservations.threads = 4
    messages = [
        dramatiq.Message(
            queue_name="q", actor_name="t", args=(), kwargs={}, options={"redis_message_id": f"r-{job_id}"},
            message_id=job_id,
        )
        for job_id in ("a", "b", "c", "dup")
    ]  # fmt: skip
    # When four messages are claimed ahead (one of them a duplicate, not claimed)
    assert reservations.ready(messages) == 4
    assert read_held(path) == Held(running=frozenset(), ahead=frozenset({"a", "b", "c"}))
    # And a thread takes one, and one is given back
    in_thread(lambda: reservations.take("r-a"))
    reservations.give_back(["r-c"])
    # Then the file says a runs, b waits
    assert given_back == [["c"]]
    assert read_held(path) == Held(running=frozenset({"a"}), ahead=frozenset({"b"}))

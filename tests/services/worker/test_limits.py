"""The supervisor's limits, its pure parts: the records a child writes, and when its supervisor kills it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.worker.held_jobs import Held, HeldJobs, held_jobs_path, read_attempts, read_held
from services.worker.limits import (
    KILL_CANCEL,
    KILL_TIME_LIMIT,
    AttemptRecord,
    Kill,
    Limits,
    catalog_limits,
    hard_limit_s,
    overdue,
)
from shared.catalog import DEFAULT_CANCEL_GRACE_S, Catalog
from tests.shared.store.test_jobs import make_job


def record(
    job_id: str, *, deadline_s: float | None = None, grace_s: float = 2.0, in_task: bool = True
) -> AttemptRecord:
    return AttemptRecord(job_id, started_s=100.0, deadline_s=deadline_s, cancel_grace_s=grace_s, in_task=in_task)


def test_nothing_is_overdue_before_its_deadline_or_its_grace() -> None:
    attempts = [record("a", deadline_s=110.0), record("b"), record("c", grace_s=5.0)]
    assert overdue(attempts, now_s=109.9, cancels_seen={"c": 106.0}) is None


def test_a_job_past_its_hard_limit_kills_its_child_for_it_alone() -> None:
    attempts = [record("late", deadline_s=108.0), record("beside", deadline_s=200.0), record("free")]
    assert overdue(attempts, now_s=108.0, cancels_seen={}) == Kill(KILL_TIME_LIMIT, frozenset({"late"}), 8.0)


def test_a_cancelled_job_still_running_after_its_grace_kills_its_child() -> None:
    attempts = [record("stuck", grace_s=2.0), record("beside")]
    # Seen cancelled at 105: not before 107
    assert overdue(attempts, now_s=106.9, cancels_seen={"stuck": 105.0}) is None
    assert overdue(attempts, now_s=107.0, cancels_seen={"stuck": 105.0}) == Kill(KILL_CANCEL, frozenset({"stuck"}))


def test_one_kill_ends_every_overdue_attempt_and_the_hard_limit_names_it() -> None:
    attempts = [record("late", deadline_s=101.0), record("stuck", grace_s=1.0)]
    kill = overdue(attempts, now_s=103.0, cancels_seen={"stuck": 101.0})
    assert kill == Kill(KILL_TIME_LIMIT, frozenset({"late", "stuck"}), 1.0)


def test_an_attempt_past_its_task_is_never_killed() -> None:
    # Its outcome hooks wait out a store or Redis outage, or a slow result upload: the task is done
    attempts = [record("done", deadline_s=101.0, in_task=False)]
    assert overdue(attempts, now_s=500.0, cancels_seen={"done": 101.0}) is None


def test_the_limits_of_a_job_come_from_its_row_and_its_task() -> None:
    fresh = Catalog()

    @fresh.task(name="slow.thing", time_limit_s=30, cancel_grace_s=0.5)
    def thing() -> None:
        """A task with a short cancel grace."""

    limits_of = catalog_limits(fresh)
    assert limits_of(make_job(task="slow.thing", time_limit_s=3.0)) == Limits(hard_limit_s(3.0), 0.5)
    assert limits_of(make_job(task="gone.task", time_limit_s=None)) == Limits(None, DEFAULT_CANCEL_GRACE_S)
    assert hard_limit_s(3.0) == 8.0 and hard_limit_s(600.0) == 660.0


class WorkerThread:
    """One thread that runs ``HeldJobs`` calls when told, as a worker thread runs its attempts."""

    def __init__(self, held: HeldJobs) -> None:
        self.held = held
        self._calls: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self._done: queue.Queue[None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (call := self._calls.get(timeout=30)) is not None:
            call()
            self._done.put(None)

    def do(self, call: Callable[[], object]) -> None:
        self._calls.put(call)
        self._done.get(timeout=10)

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=10)


def test_a_thread_inside_a_task_writes_its_deadline_and_grace(tmp_path: Path) -> None:
    path = held_jobs_path(tmp_path, "w1")
    held = HeldJobs(path, limits_of=lambda job: Limits(hard_limit_s=8.0, cancel_grace_s=1.5))
    thread = WorkerThread(held)
    # When a thread enters a job's attempt
    thread.do(lambda: held.enter(make_job(id="j1", time_limit_s=3.0)))
    # Then the supervisor reads its deadline (start + hard limit) and its cancel grace
    [attempt] = read_attempts(path) or []
    assert attempt.job_id == "j1" and attempt.in_task and attempt.cancel_grace_s == 1.5
    assert attempt.deadline_s == pytest.approx(attempt.started_s + 8.0, abs=0.002)
    # And once its task returned, the attempt still counts but has no limit left
    thread.do(held.past_task)
    [attempt] = read_attempts(path) or []
    assert not attempt.in_task and attempt.deadline_s is None
    assert read_held(path) == Held(running=frozenset({"j1"}), ahead=frozenset())
    # And once out of it, nothing is left to watch
    thread.do(held.leave)
    thread.stop()
    assert read_attempts(path) == []


def test_a_record_read_half_written_is_left_out_of_the_decision(tmp_path: Path) -> None:
    path = held_jobs_path(tmp_path, "w1")
    held = HeldJobs(path)
    thread = WorkerThread(held)
    thread.do(lambda: held.enter(make_job(id="j1", time_limit_s=3.0)))
    thread.stop()  # ended inside its attempt: its record stays
    [attempt] = read_attempts(path) or []
    # When a digit of its deadline is read as another (a write in progress)
    data = bytearray(path.read_bytes())
    deadline = f"{attempt.deadline_s:.3f}".encode()
    at = data.index(deadline)
    data[at + len(deadline) - 1] = ord("9") if data[at + len(deadline) - 1] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    # Then no decision is taken on it, though a crash would still count its attempt
    assert read_attempts(path) == []
    assert read_held(path) == Held(running=frozenset({"j1"}), ahead=frozenset())


def test_no_file_no_attempts(tmp_path: Path) -> None:
    assert read_attempts(held_jobs_path(tmp_path, "nobody")) is None

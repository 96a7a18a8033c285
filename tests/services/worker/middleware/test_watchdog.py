"""The watchdog's hard limit: only for a task still running, and not held up by the store."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from services.worker.context import JobContext
from services.worker.middleware.claims import Attempt
from services.worker.middleware.watchdog import HARD_LIMIT_EXIT_CODE, Watchdog, hard_limit_s
from shared.job import Job
from tests.shared.store.test_jobs import make_job


@dataclass
class FakeClaims:
    attempts: list[Attempt]
    reservations: object = field(default_factory=lambda: type("R", (), {"job_ids": staticmethod(list)})())

    def running(self) -> list[Attempt]:
        return self.attempts

    def is_running(self, job_id: str, thread_id: int) -> bool:
        return True


@dataclass
class FakeOutcomes:
    recorded: list[str] = field(default_factory=list)

    def record_hard_timeout(self, job: Job, limit_s: float) -> None:
        self.recorded.append(job.id)

    def cancel_reserved(self, job_ids: set[str]) -> None:
        pass


class AwayStore:
    def cancel_requested_among(self, job_ids: object) -> list[str]:
        raise ConnectionError("the store is away")


def overdue(*, returned: bool) -> Attempt:
    job = make_job(time_limit_s=1.0)
    context = JobContext(job.id, job.task, 1, None, None)  # type: ignore[arg-type]
    context.returned = returned
    return Attempt(job, thread_id=1, started_s=time.monotonic() - hard_limit_s(1.0) - 1, context=context)


def check(attempt: Attempt) -> tuple[list[int], FakeOutcomes]:
    exits: list[int] = []
    outcomes = FakeOutcomes()
    watchdog = Watchdog(AwayStore(), FakeClaims([attempt]), outcomes, exit_process=exits.append)  # type: ignore[arg-type]
    with contextlib.suppress(ConnectionError):  # the cancel checks need the store; the hard limit must not
        watchdog.check_once()
    return exits, outcomes


def test_a_task_past_its_hard_limit_replaces_the_process_even_while_the_store_is_away() -> None:
    attempt = overdue(returned=False)
    exits, outcomes = check(attempt)
    assert exits == [HARD_LIMIT_EXIT_CODE] and outcomes.recorded == [attempt.job.id]


def test_an_attempt_past_its_task_waiting_in_the_outcome_hooks_is_not_killed() -> None:
    # An outcome hook waiting out a Redis or store outage, or a slow result upload: the task is done
    exits, outcomes = check(overdue(returned=True))
    assert exits == [] and outcomes.recorded == []

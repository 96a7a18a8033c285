"""The job store as the worker and the scheduler's housekeeping use it, as a ``Protocol``.

``JobStore`` (SQL, ``shared/store/jobs.py``) and ``MemoryJobStore`` (its twin for
unit tests, ``shared/store/memory.py``) both implement it. Code typed by it can be
driven by the twin; the API and the integration tests use the SQL store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.job import Job, JobStatus
from shared.store.attempts import Claim, ClaimRequest, FinishRequest


class JobStoreProtocol(Protocol):
    # -- the worker: status_writer.py, middleware/claims.py, outcomes.py, watchdog.py, heartbeat.py --

    def commit_batch(
        self, claims: Sequence[ClaimRequest], finishes: Sequence[FinishRequest]
    ) -> tuple[list[Claim], list[bool]]:
        """Claims, then finishes, of many jobs in one transaction; the claims' outcomes and which finishes held."""
        ...

    def finish(
        self,
        job_id: str,
        *,
        owner: str,
        status: JobStatus,
        result: Any = None,
        result_url: str | None = None,
        error: dict[str, Any] | None = None,
        next_attempt_at: datetime | None = None,
    ) -> bool:
        """Record the end of an attempt; False when the lease was lost to another worker."""
        ...

    def unclaim(self, owner: str, job_ids: Sequence[str]) -> int:
        """Give back claimed jobs that never started: queued again, the attempt not counted."""
        ...

    def defer(self, job_id: str, deferred: dict[str, Any], *, scheduled: bool) -> bool:
        """Record why a waiting job has not started (a flow limit); False when it no longer waits."""
        ...

    def get(self, job_id: str) -> Job:
        """The job's row (``NotFound`` when there is none)."""
        ...

    def fail_undelivered(
        self,
        job_id: str,
        error: dict[str, Any],
        *,
        callback: Job | None = None,
        callback_outbox_id: str | None = None,
        callback_error: str | None = None,
    ) -> bool:
        """Fail for good (dead) a job whose message could not be run; False when it was final already.

        ``callback`` (its on_failure job, under outbox entry ``callback_outbox_id``) is written in the
        same commit, or ``callback_error`` says why none was submitted.
        """
        ...

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Record a running job's progress (ignored once it is not running)."""
        ...

    def renew_leases(self, owner: str, job_ids: Iterable[str], *, lease_s: float) -> None:
        """Push the leases ``owner`` holds on these jobs ``lease_s`` past now."""
        ...

    def cancel_requested_among(self, job_ids: Iterable[str]) -> list[str]:
        """Which of these jobs an operator asked to cancel."""
        ...

    # -- the scheduler's housekeeping: orphan recovery, the outbox relay, lost messages --

    def release_leases_of(self, owners: Iterable[str]) -> int:
        """Expire the leases of dead workers' running jobs; how many."""
        ...

    def unpublished(self, *, older_than: datetime, limit: int = 500, due_before: datetime | None = None) -> list[Job]:
        """Jobs committed but never handed to the broker, oldest first."""
        ...

    def mark_published(self, job_ids: Iterable[str]) -> None: ...

    def outbox_left(self, *, older_than: datetime, limit: int = 100) -> list[tuple[str, list[Job]]]:
        """Outbox entries older than ``older_than``, oldest first, each with its jobs still waiting."""
        ...

    def outbox_sent(self, entry_ids: Sequence[str]) -> None:
        """Delete outbox entries whose jobs are in Redis."""
        ...

    def waiting_published(self, *, older_than: datetime, limit: int = 5000) -> list[Job]:
        """Published jobs created before ``older_than`` still waiting for a worker, oldest first."""
        ...


if TYPE_CHECKING:
    from shared.store.jobs import JobStore
    from shared.store.memory import MemoryJobStore

    def _implementations(sql: JobStore, memory: MemoryJobStore) -> list[JobStoreProtocol]:
        """Never called: mypy checks here that both stores have every method above, with its signature."""
        return [sql, memory]

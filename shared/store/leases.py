"""Claims and leases: the worker's writes to the job rows it runs.

``JobStore`` (``shared/store/jobs.py``) takes these methods from ``Leases``. The
SQL of a batch of claims and finishes is in ``shared/store/attempts.py``; here
are the transactions around it, and the lease upkeep of the worker's heartbeat,
the watchdog's cancel check and the orphan recovery's reads and release of dead workers' leases.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from shared.job import FINAL_STATUSES, WAITING_STATUSES, Job, JobStatus, utcnow
from shared.store.attempts import Claim, ClaimRequest, FinishRequest, commit_attempts, unclaim
from shared.store.engine import write_transaction
from shared.store.models import jobs
from shared.store.submissions import write_submission


class Leases:
    """The job store's claim, finish and lease methods (each one transaction)."""

    engine: Engine

    def claim(self, job_id: str, *, owner: str, lease_s: float) -> Claim:
        """Take the job for one attempt, or say why not."""
        return self.commit_batch([ClaimRequest(job_id, owner, lease_s)], [])[0][0]

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
        request = FinishRequest(job_id, owner, status, result, result_url, error, next_attempt_at)
        return self.commit_batch([], [request])[1][0]

    def commit_batch(
        self, claims: Sequence[ClaimRequest], finishes: Sequence[FinishRequest]
    ) -> tuple[list[Claim], list[bool]]:
        """Claims and finishes of many jobs in one transaction (one commit, one fsync).

        The worker's status writer groups the writes of all its threads here.
        """
        with write_transaction(self.engine) as conn:
            return commit_attempts(conn, claims, finishes, utcnow())

    def unclaim(self, owner: str, job_ids: Sequence[str]) -> int:
        """Give back claimed jobs that never started (their messages go back to the queue)."""
        if not job_ids:
            return 0
        with write_transaction(self.engine) as conn:
            return unclaim(conn, owner, job_ids, utcnow())

    def defer(self, job_id: str, deferred: dict[str, Any], *, scheduled: bool) -> bool:
        """Record why a waiting job has not started (a flow limit); ``scheduled``: it starts later, not on a slot.

        A job no longer waiting (claimed, or final) is left alone; False then.
        """
        values: dict[str, Any] = {"deferred": deferred, "updated_at": utcnow()}
        if scheduled:
            values["status"] = JobStatus.SCHEDULED.value
        waiting = [s.value for s in WAITING_STATUSES]
        with write_transaction(self.engine) as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(waiting)).values(**values))
            return bool(done.rowcount)

    def fail_undelivered(
        self,
        job_id: str,
        error: dict[str, Any],
        *,
        callback: Job | None = None,
        callback_outbox_id: str | None = None,
        callback_error: str | None = None,
    ) -> bool:
        """Fail a job whose message could not even be run (unknown task, undecodable): it is dead.

        Its on_failure ``callback`` rides in the same commit, as a finish's does.
        """
        now = utcnow()
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.not_in([s.value for s in FINAL_STATUSES]))
                .values(
                    status=JobStatus.FAILED.value,
                    error=error,
                    dead=True,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    callback_job_id=None if callback is None else callback.id,
                    callback_error=callback_error,
                )
            )
            failed = done.rowcount == 1
            if failed and callback is not None:
                write_submission(conn, [copy.copy(callback)], callback_outbox_id, ())
        return failed

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.RUNNING.value)
                .values(progress=progress, updated_at=utcnow())
            )

    def renew_leases(self, owner: str, job_ids: Iterable[str], *, lease_s: float) -> None:
        ids = list(job_ids)
        if not ids:
            return
        now = utcnow()
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(ids), jobs.c.lease_owner == owner)
                .values(lease_expires_at=now + timedelta(seconds=lease_s))
            )

    def release_leases_of(self, owners: Iterable[str]) -> int:
        """Expire the leases of dead workers so their redelivered jobs can be claimed at once."""
        names = list(owners)
        if not names:
            return 0
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.lease_owner.in_(names), jobs.c.status == JobStatus.RUNNING.value)
                .values(lease_expires_at=utcnow())
            )
        return done.rowcount

    def running_of(self, owner: str) -> list[Job]:
        """The jobs ``owner`` holds a lease on (running, or claimed ahead of their start)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs).where(jobs.c.lease_owner == owner, jobs.c.status == JobStatus.RUNNING.value)
            )
            return [Job.from_row(row) for row in rows]

    def lease_expired(self, *, before: datetime, limit: int = 500) -> list[Job]:
        """Running jobs whose lease expired before ``before`` (no worker renewed it since), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs)
                .where(
                    jobs.c.status == JobStatus.RUNNING.value,
                    jobs.c.lease_owner.is_not(None),
                    jobs.c.lease_expires_at < before,
                )
                .order_by(jobs.c.id)
                .limit(limit)
            )
            return [Job.from_row(row) for row in rows]

    def cancel_requested_among(self, job_ids: Iterable[str]) -> list[str]:
        """Which of these running jobs an operator asked to cancel."""
        ids = list(job_ids)
        if not ids:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.cancel_requested.is_(True)))
            return [row.id for row in rows]

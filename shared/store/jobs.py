"""The job repository: every read and write of job rows goes through ``JobStore``.

Its methods are grouped by what they serve, one module each: submission and the
outbox (``submissions.py``), the worker's claims and leases (``leases.py``), dead
letters and queue counts (``dead_letters.py``). Reads and cancellation are here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, update

from shared.errors import Conflict, NotFound
from shared.job import FINAL_STATUSES, WAITING_STATUSES, Job, JobStatus, utcnow
from shared.store.dead_letters import DeadLetters
from shared.store.engine import write_transaction
from shared.store.leases import Leases
from shared.store.models import job_attempts, jobs
from shared.store.pages import JobFilter, Page, decode_cursor, encode_cursor, page_query
from shared.store.submissions import _BY_KEYS_SELECT, Submissions, insert_job_rows

# NOTE: re-exported: callers import them from here, where they were before the store was split.
__all__ = ["_BY_KEYS_SELECT", "JobFilter", "JobStore", "Page", "decode_cursor", "encode_cursor", "insert_job_rows"]


class JobStore(Submissions, Leases, DeadLetters):
    """Job rows in SQL: the reads here and the methods of the classes it combines. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- reading ---------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return Job.from_row(row)

    def attempt_history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's ended attempts (``job_attempts`` rows), first first; see ``attempts.attempt_views``."""
        query = select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.attempt)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def count_waiting(self, namespace: str | None) -> int:
        """How many jobs of ``namespace`` wait for a worker (queued, scheduled, retrying): its quota's measure."""
        waiting = [status.value for status in WAITING_STATUSES]
        # NOTE: the namespace is compared through an expression no index holds, so both databases find the
        # waiting rows (few) through the index on status; PostgreSQL joined the bitmap of every row of the
        # namespace to them, a read that grew with the namespace's history.
        of_namespace = func.coalesce(jobs.c.namespace, "") == (namespace or "")
        with self.engine.connect() as conn:
            query = select(func.count()).where(of_namespace, jobs.c.status.in_(waiting))
            return int(conn.execute(query).scalar_one())

    def page(self, filters: JobFilter, *, limit: int = 50, cursor: str | None = None) -> Page:
        """Newest first; the cursor is the last id seen, so inserts never shift a page (``shared/store/pages.py``)."""
        query = page_query(filters, limit=limit, cursor=cursor)
        with self.engine.connect() as conn:
            return query.run(conn)

    # -- control ---------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """Cancel a waiting job at once; flag a running one for interruption."""
        now = utcnow()
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            job = Job.from_row(row)
            if job.status in FINAL_STATUSES:
                raise Conflict(f"job {job_id} is already {job.status.value}")
            if job.status in WAITING_STATUSES:
                conn.execute(_final(job_id, JobStatus.CANCELLED, now).values(cancel_requested=True))
            else:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True, updated_at=now))
        return self.get(job_id)


def _final(job_id: str, status: JobStatus, now: datetime) -> Any:
    return (
        update(jobs)
        .where(jobs.c.id == job_id)
        .values(
            status=status.value,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            next_attempt_at=None,
        )
    )

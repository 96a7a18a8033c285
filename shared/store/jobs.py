"""The job repository: every read and write of job rows goes through ``JobStore``.

Its methods are grouped by what they serve, one module each: submission and the
outbox (``submissions.py``), the worker's claims and leases (``leases.py``), dead
letters and queue counts (``dead_letters.py``). Reads and cancellation are here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, and_, func, select, update

from shared.errors import Conflict, InvalidInput, NotFound
from shared.ids import id_lower_bound
from shared.job import FINAL_STATUSES, WAITING_STATUSES, Job, JobStatus, utcnow
from shared.store.dead_letters import DeadLetters
from shared.store.engine import write_transaction
from shared.store.leases import Leases
from shared.store.models import jobs
from shared.store.submissions import _BY_KEYS_SELECT, Submissions, insert_job_rows

# NOTE: re-exported: callers import them from here, where they were before the store was split.
__all__ = ["_BY_KEYS_SELECT", "JobFilter", "JobStore", "Page", "decode_cursor", "encode_cursor", "insert_job_rows"]


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    task: str | None = None
    queue: str | None = None
    workflow_id: str | None = None
    schedule_id: str | None = None
    created_after: datetime | None = None
    dead: bool | None = None
    #: Tenants: only this namespace's jobs (None: every job).
    namespace: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": job_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        before = data["before"]
        if not isinstance(before, str) or len(before) > 36 or "\x00" in before:
            raise ValueError
        return before
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this API returned") from None


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

    def count_waiting(self, namespace: str | None) -> int:
        """How many jobs of ``namespace`` wait for a worker (queued, scheduled, retrying): its quota's measure."""
        waiting = [status.value for status in WAITING_STATUSES]
        with self.engine.connect() as conn:
            query = select(func.count()).where(jobs.c.namespace == namespace, jobs.c.status.in_(waiting))
            return int(conn.execute(query).scalar_one())

    def page(self, filters: JobFilter, *, limit: int = 50, cursor: str | None = None) -> Page:
        """Newest first; the cursor is the last id seen, so inserts never shift a page."""
        query = self.page_query(filters, limit=limit, cursor=cursor)
        with self.engine.connect() as conn:
            items = [Job.from_row(row) for row in conn.execute(query)]
        next_cursor = encode_cursor(items[limit - 1].id) if len(items) > limit else None
        return Page(items=items[:limit], next_cursor=next_cursor)

    @staticmethod
    def page_query(filters: JobFilter, *, limit: int, cursor: str | None) -> Select[Any]:
        """The SELECT of one page: every filter is served by an index (tests/shared/store/test_query_plans.py)."""
        query = select(jobs)
        conditions = []
        for name in ("task", "queue", "workflow_id", "schedule_id", "namespace"):
            value = getattr(filters, name)
            if value is not None:
                conditions.append(jobs.c[name] == value)
        if filters.status is not None:
            conditions.append(jobs.c.status == filters.status.value)
        if filters.created_after is not None:
            # NOTE: ids are time-ordered (UUIDv7), so the bound on the id lets the index skip older rows.
            conditions.append(jobs.c.id >= id_lower_bound(filters.created_after))
            conditions.append(jobs.c.created_at > filters.created_after)
        if filters.dead is True:
            # Written as the partial index's own condition, so both databases can use it.
            conditions.append(jobs.c.dead)
        elif filters.dead is False:
            conditions.append(jobs.c.dead.is_(False))
        if cursor is not None:
            conditions.append(jobs.c.id < decode_cursor(cursor))
        if conditions:
            query = query.where(and_(*conditions))
        return query.order_by(jobs.c.id.desc()).limit(limit + 1)

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

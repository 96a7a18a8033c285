"""Pages of the job list: keyset pagination on the time-ordered id, each page bounded by its rows, not the table.

A page walks one index in id order (newest first) and stops at ``limit`` + 1 rows.
When every filter is part of that index, the walk reads only the rows it returns.
When some filters are checked row by row (a combination no index holds, such as
a queue and a task), a rare combination would make the walk read every row of the
index's prefix; so the walk reads at most ``SCAN_ROWS`` rows, and a page that ends
there is short (even empty) with a ``next_cursor`` that goes on from where it
stopped. A client follows ``next_cursor`` until it is null, as for any page.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select, true
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.util import ClauseAdapter

from shared.errors import InvalidInput
from shared.ids import id_lower_bound
from shared.job import Job, JobStatus
from shared.store.models import jobs

#: The most rows one page reads when some of its filters are checked row by row.
SCAN_ROWS = 5000


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


@dataclass(frozen=True)
class PageQuery:
    """One page's SELECT, built for the database that runs it (``statement``), and how to read its result."""

    #: Conditions the walked index holds (with the id range) and conditions checked row by row.
    indexed: list[ColumnElement[bool]]
    checked: list[ColumnElement[bool]]
    limit: int

    @property
    def window(self) -> Select[Any] | None:
        """The ids the walk reads (at most ``SCAN_ROWS``), newest first; None when every filter is in the index."""
        if not self.checked:
            return None
        return select(jobs.c.id).where(*self.indexed).order_by(jobs.c.id.desc()).limit(SCAN_ROWS)

    def statement(self, dialect: str) -> Select[Any]:
        newest_first = jobs.c.id.desc()
        window = self.window
        if window is None:
            return select(jobs).where(*self.indexed).order_by(newest_first).limit(self.limit + 1)
        if dialect != "postgresql":
            # NOTE: SQLite walks the chosen index as a co-routine and checks each row as it comes; it
            # sorts the rows kept again (it does not carry the walk's order through), at most SCAN_ROWS.
            rows = select(jobs).where(*self.indexed).order_by(newest_first).limit(SCAN_ROWS).subquery("walked")
            checks = [ClauseAdapter(rows).traverse(check) for check in self.checked]
            return select(*rows.c).where(*checks).order_by(rows.c.id.desc()).limit(self.limit + 1)
        walked = window.subquery("walked")
        # NOTE: the walk reads ids only, so PostgreSQL walks the chosen index alone (index-only); each
        # row then comes by its primary key in a LATERAL lookup (OFFSET 0 keeps the planner from
        # merging it into a join, where it preferred a bitmap of every row of a checked status or a
        # scan of the primary key over the walk's whole id range), and the outer LIMIT ends the walk
        # as soon as the page is full.
        row = select(jobs).where(jobs.c.id == walked.c.id, *self.checked).offset(0).lateral("row")
        return select(*row.c).select_from(walked).join(row, true()).order_by(walked.c.id.desc()).limit(self.limit + 1)

    def run(self, conn: Connection) -> Page:
        items = [Job.from_row(row) for row in conn.execute(self.statement(conn.dialect.name))]
        if len(items) > self.limit:
            return Page(items=items[: self.limit], next_cursor=encode_cursor(items[self.limit - 1].id))
        window = self.window
        if window is not None:
            seen = window.subquery()
            read, oldest = conn.execute(select(func.count(), func.min(seen.c.id))).one()
            if read >= SCAN_ROWS:
                # NOTE: the walk stopped at its bound, not at the end of the index: go on below it.
                return Page(items=items, next_cursor=encode_cursor(oldest))
        return Page(items=items, next_cursor=None)


def page_query(
    filters: JobFilter,
    *,
    limit: int,
    cursor: str | None,
    created_before: datetime | None = None,
    checks: Sequence[ColumnElement[bool]] = (),
) -> PageQuery:
    """One page of jobs matching ``filters`` (and ``checks``, conditions no index holds), newest first.

    The index walked is the one holding the most of the filters (``_split``); the id range
    (cursor, ``created_after``, ``created_before``) bounds the walk in every index, since each
    ends with the id. The plans are checked in tests/shared/store/test_query_plans.py.
    """
    indexed, checked = _split(filters)
    checked.extend(checks)
    if filters.created_after is not None:
        # NOTE: ids are time-ordered (UUIDv7), so the bound on the id lets the index skip older rows.
        indexed.append(jobs.c.id >= id_lower_bound(filters.created_after))
        indexed.append(jobs.c.created_at > filters.created_after)
    if created_before is not None:
        indexed.append(jobs.c.id < id_lower_bound(created_before))
    if cursor is not None:
        indexed.append(jobs.c.id < decode_cursor(cursor))
    return PageQuery(indexed=indexed, checked=checked, limit=limit)


def _split(filters: JobFilter) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """The filters an index holds (walked in id order) and the ones checked row by row.

    Indexes, most selective first: a workflow's or a schedule's jobs; a queue's dead letters
    (``ix_jobs_dead``); a queue's jobs in one status (``ix_jobs_queue_status_id``); a task's, a
    queue's, a namespace's jobs; the jobs in one status; every job (the primary key).
    """
    equal: dict[str, Any] = {
        name: getattr(filters, name)
        for name in ("workflow_id", "schedule_id", "task", "queue", "namespace")
        if getattr(filters, name) is not None
    }
    status = filters.status.value if filters.status is not None else None
    dead = filters.dead
    if dead is True and status is None and "queue" not in equal:
        # NOTE: a dead letter is a failed job (the worker sets both; a requeue clears both), so the
        # status lets the dead letters of no queue in particular walk the index on status.
        status = JobStatus.FAILED.value
    if status is not None:
        equal["status"] = status
    if dead is True and "queue" in equal:
        chosen = ["queue", "dead"]
    elif "workflow_id" in equal:
        chosen = ["workflow_id"]
    elif "schedule_id" in equal:
        chosen = ["schedule_id"]
    elif "queue" in equal and "status" in equal:
        chosen = ["queue", "status"]
    else:
        chosen = next(([name] for name in ("task", "queue", "namespace", "status") if name in equal), [])
    indexed: list[ColumnElement[bool]] = []
    checked: list[ColumnElement[bool]] = []
    for name, value in equal.items():
        (indexed if name in chosen else checked).append(jobs.c[name] == value)
    if dead is True:
        # Written as the partial index's own condition, so both databases can use it.
        (indexed if "dead" in chosen else checked).append(jobs.c.dead)
    elif dead is False:
        checked.append(jobs.c.dead.is_(False))
    return indexed, checked

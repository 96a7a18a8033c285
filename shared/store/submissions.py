"""Submission and the outbox: inserting job rows, and the queries that get them to the broker.

``JobStore`` (``shared/store/jobs.py``) takes these methods from ``Submissions``.
A job row reaches Redis either through its request (written marked published
under an outbox entry the API deletes once it is sent) or through the relay
(``services/scheduler/relay.py``), which reads the unpublished rows and the
outbox entries left behind here.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnClause,
    Connection,
    Engine,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError

from shared.errors import Conflict
from shared.ids import id_lower_bound
from shared.job import WAITING_STATUSES, Job, due_for_broker, utcnow
from shared.store.engine import write_transaction
from shared.store.models import UtcDateTime, jobs, outbox
from shared.store.sql import InList
from shared.store.uniqueness import settle_unique


class Submissions:
    """The job store's submission and outbox methods (each one transaction)."""

    engine: Engine

    def insert(self, new_jobs: Sequence[Job], *, outbox_id: str | None = None) -> list[tuple[Job, bool]]:
        """Insert all jobs in one transaction; returns (job, created) pairs in order.

        A job whose idempotency key exists already gives the stored job
        (created False) when the request hash matches, else ``Conflict``.
        With ``outbox_id``, the new jobs the broker takes now are written marked
        published (``published_at`` set on them) under an outbox entry of that id,
        which the caller deletes once they are in Redis (``outbox_sent``); the
        others are left to the relay as without it.
        """
        [outcome] = self.insert_groups([new_jobs], outbox_id=outbox_id)
        if isinstance(outcome, Conflict):
            raise outcome
        return outcome

    def insert_groups(
        self,
        groups: Sequence[Sequence[Job]],
        *,
        outbox_id: str | None = None,
        sent: Sequence[str] = (),
        races_left: int = 8,
    ) -> list[list[tuple[Job, bool]] | Conflict]:
        """``insert`` for the jobs of many requests in one transaction (one commit).

        Each group is all or nothing: a group with an idempotency conflict stores
        none of its rows and gets its ``Conflict`` back, and the other groups are
        unaffected. The API's submit writer groups concurrent requests here, and
        deletes the outbox entries it published since its last commit (``sent``)
        in the same transaction instead of a write of their own.
        """
        outcomes: list[list[tuple[Job, bool]] | Conflict | None] = [None] * len(groups)
        group_keys: list[list[str]] = []
        for index, group in enumerate(groups):
            keys = [job.idempotency_key for job in group if job.idempotency_key]
            group_keys.append(keys)
            if len(keys) != len(set(keys)):
                outcomes[index] = Conflict("the same idempotency key appears twice in one request")
        all_keys = sorted({key for keys in group_keys for key in keys})
        # A group reusing a key another group of this transaction inserts goes in a later one,
        # where it finds that row as a repeat request would.
        later: list[int] = []
        try:
            with write_transaction(self.engine) as conn:
                existing: dict[str, Job] = {}
                if all_keys:
                    rows = conn.execute(_BY_KEYS_SELECT, {"keys": all_keys})
                    existing = {job.idempotency_key or "": job for job in map(Job.from_row, rows)}
                inserting: set[str] = set()
                to_insert: list[Job] = []
                for index, group in enumerate(groups):
                    if outcomes[index] is not None:
                        continue
                    if inserting.intersection(group_keys[index]):
                        later.append(index)
                        continue
                    decided = outcomes[index] = _decide_group(group, existing)
                    if isinstance(decided, Conflict):
                        continue
                    inserting.update(group_keys[index])
                    to_insert.extend(job for job, created in decided if created)
                instead = settle_unique(conn, to_insert, utcnow())
                if instead:
                    to_insert = [job for job in to_insert if job.id not in instead]
                    outcomes = [_deduplicated(outcome, instead) for outcome in outcomes]
                write_submission(conn, to_insert, outbox_id, sent)
        except IntegrityError:
            # A concurrent request with the same idempotency or uniqueness key won the race; answer as a
            # repeat would (the retry finds its row).
            # NOTE: bounded, so that a refusal the retry cannot resolve (a taken primary key) is raised.
            if races_left <= 0 or (not all_keys and not any(job.unique_key for group in groups for job in group)):
                raise
            return self.insert_groups(groups, outbox_id=outbox_id, sent=sent, races_left=races_left - 1)
        if later:
            # NOTE: without an outbox entry (the caller knows of one only), so the relay publishes
            # their new jobs: a request reusing a key that another request of this commit inserts
            # is a repeat, and has new jobs only beside that key in a batch.
            for index, outcome in zip(later, self.insert_groups([groups[i] for i in later]), strict=True):
                outcomes[index] = outcome
        answered = [outcome for outcome in outcomes if outcome is not None]
        if len(answered) != len(groups):
            raise RuntimeError("a request of the group commit was left undecided")
        return answered

    def outbox_sent(self, entry_ids: Sequence[str]) -> None:
        """Delete outbox entries whose jobs are in Redis."""
        if entry_ids:
            with write_transaction(self.engine) as conn:
                conn.execute(_OUTBOX_DELETE, {"ids": list(entry_ids)})

    def outbox_left(self, *, older_than: datetime, limit: int = 100) -> list[tuple[str, list[Job]]]:
        """Outbox entries written before ``older_than`` and still there, oldest first, each with its
        jobs that still wait for a worker (the relay publishes those, then deletes the entry)."""
        with self.engine.connect() as conn:
            entries = conn.execute(
                select(outbox.c.id, outbox.c.job_ids)
                .where(outbox.c.id < id_lower_bound(older_than))
                .order_by(outbox.c.id)
                .limit(limit)
            ).all()
            ids = [job_id for entry in entries for job_id in entry.job_ids]
            waiting = [status.value for status in WAITING_STATUSES]
            found: dict[str, Job] = {}
            for start in range(0, len(ids), 5000):
                rows = conn.execute(
                    select(jobs).where(InList(jobs.c.id, "ids"), jobs.c.status.in_(waiting)),
                    {"ids": ids[start : start + 5000]},
                )
                found.update((job.id, job) for job in map(Job.from_row, rows))
        return [(entry.id, [found[job_id] for job_id in entry.job_ids if job_id in found]) for entry in entries]

    def mark_published(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with write_transaction(self.engine) as conn:
            _mark_published(conn, ids)

    def unpublished(self, *, older_than: datetime, limit: int = 500, due_before: datetime | None = None) -> list[Job]:
        """Jobs committed but never handed to the broker (the outbox); with ``due_before``, only
        those whose time (retry, eta or delay) is unset or not later (``due_for_broker``)."""
        conditions = [jobs.c.published_at.is_(None), jobs.c.held.is_(False), jobs.c.created_at < older_than]
        if due_before is not None:
            due = func.coalesce(jobs.c.next_attempt_at, jobs.c.scheduled_for)
            conditions.append(or_(due.is_(None), due <= due_before))
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(*conditions).order_by(jobs.c.created_at).limit(limit))
            return [Job.from_row(row) for row in rows]

    def waiting_published(self, *, older_than: datetime, limit: int = 5000) -> list[Job]:
        """Oldest first: published jobs created before ``older_than`` still waiting for a worker."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs)
                .where(
                    jobs.c.status.in_([status.value for status in WAITING_STATUSES]),
                    jobs.c.id < id_lower_bound(older_than),
                    jobs.c.published_at.is_not(None),
                    jobs.c.held.is_(False),
                )
                .order_by(jobs.c.id)
                .limit(limit)
            )
            return [Job.from_row(row) for row in rows]


# NOTE: the statements of the submit path are built once: building one costs more than running it.
_INSERT = jobs.insert()
_BY_KEYS_SELECT = select(jobs).where(InList(jobs.c.idempotency_key, "keys"))
_MARK_PUBLISHED = (
    update(jobs).where(InList(jobs.c.id, "ids"), jobs.c.published_at.is_(None)).values(published_at=bindparam("now"))
)


def insert_job_rows(conn: Connection, new_jobs: Sequence[Job]) -> None:
    """Insert job rows: one DBAPI executemany on SQLite, each value converted by its column
    type; on PostgreSQL one ``INSERT ... SELECT FROM json_populate_recordset(...)`` of all
    the rows as one JSON text.

    NOTE: SQLAlchemy's executemany builds an execution context and processes every
    parameter set through its compiled statement, which cost more than SQLite's own
    insert of a 1,000-job batch; the statement, the attribute getter and the converters
    are prepared once per dialect, so this is the same INSERT with the same values,
    minus that overhead. On PostgreSQL, psycopg sends an executemany as one statement
    per row (each waited on in Python under gevent), rewrites a multi-row VALUES
    statement's placeholders in Python on every call, and dumps an array parameter per
    column in Python; one JSON text is one parameter whatever the row count, written by
    the json module's C encoder, and the statement's text never changes, so psycopg
    prepares it once. The server reads each field with its column's type, so a value
    too long for its column is refused as an INSERT of it would be.
    """
    if not new_jobs:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_postgresql_insert(conn.dialect), {"rows": _rows_json(new_jobs)})
        return
    plan = _insert_plan(conn.dialect)
    params: list[list[Any]] = []
    for job in new_jobs:
        values = list(plan.values_of(job))
        values[plan.status_at] = job.status.value
        for at, convert, of_none in plan.converters:
            value = values[at]
            values[at] = of_none if value is None else convert(value)
        params.append(values)
    conn.exec_driver_sql(plan.sql, [tuple(values) for values in params])


#: The job attributes that are columns, and those holding datetimes.
_COLUMNS = frozenset(column.key for column in jobs.columns)
_TIMES = tuple(column.key for column in jobs.columns if isinstance(column.type, UtcDateTime))


def _rows_json(new_jobs: Sequence[Job]) -> str:
    """The jobs as a JSON array of rows, a key per column that is not NULL, times in ISO 8601 UTC."""
    rows = []
    for job in new_jobs:
        row = {name: value for name, value in vars(job).items() if value is not None and name in _COLUMNS}
        row["status"] = job.status.value
        for name in _TIMES:
            if name in row:
                row[name] = _utc_text(row[name])
        rows.append(row)
    return json.dumps(rows, separators=(",", ":"))


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the job store")
    return value.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class _InsertPlan:
    sql: str
    #: The job's attribute of each parameter, in order, as a tuple.
    values_of: Callable[[Job], tuple[Any, ...]]
    status_at: int
    #: (parameter index, converter, what it makes of None) for each column whose type converts.
    converters: list[tuple[int, Callable[[Any], Any], Any]]


@functools.cache
def _insert_plan(dialect: Dialect) -> _InsertPlan:
    """The INSERT of every column compiled for SQLite's positional parameters (PostgreSQL takes
    ``_postgresql_insert``), and how to turn a job into them."""
    compiled = _INSERT.compile(dialect=dialect, column_keys=[column.key for column in jobs.columns])
    names = list(compiled.positiontup or [])
    converters: list[tuple[int, Callable[[Any], Any], Any]] = []
    for at, name in enumerate(names):
        convert = jobs.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            converters.append((at, convert, convert(None)))
    return _InsertPlan(
        sql=compiled.string,
        values_of=operator.attrgetter(*names),
        status_at=names.index("status"),
        converters=converters,
    )


_OUTBOX_INSERT = outbox.insert()
_OUTBOX_DELETE = outbox.delete().where(InList(outbox.c.id, "ids"))


def write_submission(conn: Connection, new_jobs: Sequence[Job], outbox_id: str | None, sent: Sequence[str]) -> None:
    """Insert ``new_jobs``, with outbox entry ``outbox_id`` listing those the broker takes now
    (written marked published), and delete the outbox entries ``sent``.

    NOTE: on PostgreSQL the three are one statement (the entry and the deletion as data-modifying
    CTEs of the INSERT): one round trip to the server instead of three.
    """
    now = utcnow()
    handed = [job for job in new_jobs if not job.held and due_for_broker(job, now)] if outbox_id else []
    for job in handed:
        job.published_at = now
    entry_ids = [job.id for job in handed]
    if conn.dialect.name != "postgresql" or not new_jobs:
        if handed:
            conn.execute(_OUTBOX_INSERT, {"id": outbox_id, "job_ids": entry_ids, "created_at": now})
        insert_job_rows(conn, new_jobs)
        if sent:
            conn.execute(_OUTBOX_DELETE, {"ids": list(sent)})
        return
    params: dict[str, Any] = {"rows": _rows_json(new_jobs)}
    if handed:
        params.update(entry_id=outbox_id, entry_jobs=json.dumps(entry_ids), entry_at=now)
    if sent:
        params["sent"] = list(sent)
    conn.exec_driver_sql(_postgresql_insert(conn.dialect, entry=bool(handed), sent=bool(sent)), params)


@functools.cache
def _postgresql_insert(dialect: Dialect, *, entry: bool = False, sent: bool = False) -> str:
    """The INSERT of any number of job rows from one JSON text (``rows``); with ``entry``, it also
    writes an outbox entry (``entry_id``, ``entry_jobs``, ``entry_at``), and with ``sent`` deletes
    the outbox entries listed (``sent``)."""
    names = [column.key for column in jobs.columns]
    # A NULL of the table's row type tells the function each field's type.
    rows_of_jobs = func.json_populate_recordset(literal_column("NULL::jobs"), cast(bindparam("rows"), JSON))
    fields: list[ColumnClause[Any]] = [column(name) for name in names]
    statement = jobs.insert().from_select(names, select(*fields).select_from(rows_of_jobs))
    if entry:
        values: dict[str, Any] = {
            "id": bindparam("entry_id"),
            "job_ids": bindparam("entry_jobs"),
            "created_at": bindparam("entry_at"),
        }
        statement = statement.add_cte(outbox.insert().values(values).cte("entry"))
    if sent:
        statement = statement.add_cte(outbox.delete().where(InList(outbox.c.id, "sent")).cte("sent"))
    return str(statement.compile(dialect=dialect))


def _mark_published(conn: Connection, job_ids: Sequence[str]) -> None:
    conn.execute(_MARK_PUBLISHED, {"ids": list(job_ids), "now": utcnow()})


def _deduplicated(
    outcome: list[tuple[Job, bool]] | Conflict | None, instead: dict[str, Job]
) -> list[tuple[Job, bool]] | Conflict | None:
    """A group's pairs with each job a held uniqueness key replaced by the job returned instead."""
    if outcome is None or isinstance(outcome, Conflict):
        return outcome
    return [(instead[job.id], False) if created and job.id in instead else (job, created) for job, created in outcome]


def _decide_group(group: Sequence[Job], existing: dict[str, Job]) -> list[tuple[Job, bool]] | Conflict:
    """(job, created) pairs of one request's jobs, or its conflict: a key found with another request."""
    out: list[tuple[Job, bool]] = []
    for job in group:
        found = existing.get(job.idempotency_key) if job.idempotency_key else None
        if found is None:
            out.append((job, True))
        elif found.request_hash != job.request_hash:
            return Conflict(f"idempotency key {job.idempotency_key!r} was used with a different request")
        else:
            out.append((found, False))
    return out

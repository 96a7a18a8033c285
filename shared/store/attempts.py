"""The worker's writes: claiming a job for an attempt and recording how the attempt ended.

A worker process commits the claims and finishes of all its threads together
(``services/worker/status_writer.py``). Within one such batch most rows take
the same values (one owner, one ``now``, a no-result success), so each group
of identical values is one ``UPDATE ... WHERE id IN (...)``: its parameters are
converted once, not once per row, which is most of what a batch costs.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Insert, Update, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shared.job import FINAL_STATUSES, Job, JobStatus, rfc3339
from shared.store.models import job_attempts, jobs
from shared.store.sql import InList
from shared.store.submissions import write_submission


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"
    DUPLICATE = "duplicate"  # final already, or running under another worker's live lease
    #: Running under this owner's live lease: a claim of its own whose answer it lost (a failed
    #: commit that did commit, a retry); the worker runs it unless it already does.
    OWNED = "owned"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    MISSING = "missing"


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None


@dataclass(frozen=True)
class ClaimRequest:
    job_id: str
    owner: str
    lease_s: float


@dataclass(frozen=True)
class FinishRequest:
    job_id: str
    owner: str
    status: JobStatus
    result: Any = None
    result_url: str | None = None
    error: dict[str, Any] | None = None
    next_attempt_at: datetime | None = None
    #: The callback job to insert in the same commit (under outbox entry ``callback_outbox_id``), or
    #: why the callback that fell due could not be submitted.
    callback: Job | None = None
    callback_outbox_id: str | None = None
    callback_error: str | None = None
    #: The attempt this ends (its number and start, as claimed): recorded in ``job_attempts`` with
    #: the finish, the job's timeline. None: no history row (a finish outside an attempt's path).
    attempt: int | None = None
    started_at: datetime | None = None

    @property
    def is_plain(self) -> bool:
        """Nothing of its own to write (a success without a result): it shares one UPDATE with its kind."""
        return (
            self.result is None
            and self.result_url is None
            and self.error is None
            and self.next_attempt_at is None
            and self.callback is None
            and self.callback_error is None
        )


def commit_attempts(
    conn: Connection, claims: Sequence[ClaimRequest], finishes: Sequence[FinishRequest], now: datetime
) -> tuple[list[Claim], list[bool]]:
    """Decide and write the claims, then the finishes, inside the caller's write transaction."""
    found: dict[str, Job] = {}
    ids = [request.job_id for request in claims]
    if ids:
        found = {job.id: job for job in map(Job.from_row, conn.execute(_CLAIM_SELECT, {"ids": ids}))}
    outcomes = []
    claimed: dict[tuple[str, float], list[str]] = {}
    other_writes: list[tuple[str, dict[str, Any]]] = []
    claimed_here: set[str] = set()
    for request in claims:
        claim, values = decide_claim(found.get(request.job_id), request, now)
        if request.job_id in claimed_here:
            # A second delivery in the same batch is a duplicate, whoever claims it.
            claim, values = Claim(ClaimOutcome.DUPLICATE, found[request.job_id]), {}
        if claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None:
            claimed_here.add(request.job_id)
            # A second claim of the same job in this batch must see it taken.
            found[request.job_id] = claim.job
            claimed.setdefault((request.owner, request.lease_s), []).append(request.job_id)
        elif values:
            other_writes.append((request.job_id, values))
        outcomes.append(claim)
    for (owner, lease_s), job_ids in claimed.items():
        conn.execute(
            _CLAIM_UPDATE,
            {"ids": job_ids, "now": now, "owner": owner, "lease_expires_at": now + timedelta(seconds=lease_s)},
        )
    for job_id, values in other_writes:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
    done = _finish_many(conn, finishes, now)
    _record_attempts(conn, [finish for finish, written in zip(finishes, done, strict=True) if written], now)
    for finish, written in zip(finishes, done, strict=True):
        if written and finish.callback is not None:
            # NOTE: the callback's row and its outbox entry ride in the outcome's commit: the worker
            # publishes it after the commit, and the relay does if the worker could not.
            write_submission(conn, [copy.copy(finish.callback)], finish.callback_outbox_id, ())
    return outcomes, done


def unclaim(conn: Connection, owner: str, job_ids: Sequence[str], now: datetime) -> int:
    """Give back jobs claimed by ``owner`` that never started: queued again, the attempt not counted."""
    return int(conn.execute(_UNCLAIM, {"ids": list(job_ids), "owner": owner, "now": now}).rowcount)


def decide_claim(job: Job | None, request: ClaimRequest, now: datetime) -> tuple[Claim, dict[str, Any]]:
    """What a claim of this row does: its outcome and, unless it claims, the column values to write."""
    if job is None:
        return Claim(ClaimOutcome.MISSING, None), {}
    if job.status in FINAL_STATUSES:
        return Claim(ClaimOutcome.DUPLICATE, job), {}
    final = {"finished_at": now, "updated_at": now, "lease_owner": None, "lease_expires_at": None}
    if job.cancel_requested:
        return Claim(ClaimOutcome.CANCELLED, job), {
            **final,
            "status": JobStatus.CANCELLED.value,
            "next_attempt_at": None,
        }
    if job.status == JobStatus.RUNNING and job.lease_expires_at and job.lease_expires_at > now:
        return Claim(ClaimOutcome.OWNED if job.lease_owner == request.owner else ClaimOutcome.DUPLICATE, job), {}
    waited_since = job.scheduled_for or job.created_at
    if job.max_age_s is not None and job.attempts == 0 and now - waited_since > timedelta(seconds=job.max_age_s):
        error = {"type": "Expired", "message": f"waited longer than max_age_s={job.max_age_s:g}", "retryable": False}
        return Claim(ClaimOutcome.EXPIRED, job), {**final, "status": JobStatus.EXPIRED.value, "error": error}
    claimed = copy.copy(job)
    claimed.status = JobStatus.RUNNING
    claimed.attempts = job.attempts + 1
    claimed.started_at = now
    claimed.next_attempt_at = None
    claimed.deferred = None
    claimed.lease_owner = request.owner
    claimed.lease_expires_at = now + timedelta(seconds=request.lease_s)
    claimed.updated_at = now
    return Claim(ClaimOutcome.CLAIMED, claimed), {}


def _finish_many(conn: Connection, finishes: Sequence[FinishRequest], now: datetime) -> list[bool]:
    """Write the finishes, one statement per group of equal values; say which lost their lease."""
    done = [True] * len(finishes)
    plain: dict[tuple[str, JobStatus], list[int]] = {}
    shaped: dict[tuple[str, ...], list[int]] = {}
    rows: dict[int, dict[str, Any]] = {}
    for index, request in enumerate(finishes):
        if request.is_plain:
            plain.setdefault((request.owner, request.status), []).append(index)
        else:
            rows[index] = _finish_values(request, now)
            shaped.setdefault(tuple(sorted(rows[index])), []).append(index)
    for (owner, _), indexes in plain.items():
        values = {f"b_{k}": v for k, v in _finish_values(finishes[indexes[0]], now).items()}
        ids = [finishes[i].job_id for i in indexes]
        written = conn.execute(_plain_finish_update(tuple(sorted(values))), {"ids": ids, "owner": owner, **values})
        _check_written(conn, written.rowcount, finishes, indexes, now, done)
    for columns, indexes in shaped.items():
        params = [
            {"b_id": finishes[i].job_id, "b_owner": finishes[i].owner, **{f"b_{k}": v for k, v in rows[i].items()}}
            for i in indexes
        ]
        written = conn.execute(_finish_update(columns), params)
        _check_written(conn, written.rowcount, finishes, indexes, now, done)
    return done


def _check_written(
    conn: Connection,
    rowcount: int,
    finishes: Sequence[FinishRequest],
    indexes: list[int],
    now: datetime,
    done: list[bool],
) -> None:
    """Mark in ``done`` the finishes of ``indexes`` whose row did not take the write (its lease was lost)."""
    if rowcount == len(indexes):
        return
    # Rare: some lease was lost. Find which rows did not take the write.
    ids = [finishes[i].job_id for i in indexes]
    # NOTE: updated_at alone is not enough: a claim of the same batch may have written the row at this
    # same ``now`` (a duplicate delivery's claim that cancelled the job), so the status must match too.
    written = conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(ids), jobs.c.updated_at == now))
    status_of = {row.id: row.status for row in written}
    for i in indexes:
        done[i] = status_of.get(finishes[i].job_id) == finishes[i].status.value


def attempt_row(request: FinishRequest, now: datetime) -> dict[str, Any]:
    """The ``job_attempts`` row of a written finish (the API shows ``error`` as it shows the job's)."""
    return {
        "job_id": request.job_id,
        "attempt": request.attempt,
        "worker": request.owner,
        "started_at": request.started_at,
        "finished_at": now,
        "outcome": request.status.value,
        "error": request.error,
        "next_attempt_at": request.next_attempt_at if request.status is JobStatus.RETRYING else None,
    }


def attempt_views(rows: Sequence[Mapping[str, Any]], *, traceback: bool = False) -> list[dict[str, Any]]:
    """The ended attempts as the API shows them: each with its ``duration_s`` and the ``backoff_s``
    before the next attempt started (None for the last, or one never followed); ``traceback`` as
    for the job's own error (admin scope)."""
    views = []
    for index, row in enumerate(rows):
        started, finished = row["started_at"], row["finished_at"]
        after = rows[index + 1]["started_at"] if index + 1 < len(rows) else None
        error = row["error"]
        if error and not traceback:
            error = {key: value for key, value in error.items() if key != "traceback"}
        views.append(
            {
                "attempt": row["attempt"],
                "worker": row["worker"],
                "started_at": rfc3339(started),
                "finished_at": rfc3339(finished),
                "duration_s": None if started is None else round((finished - started).total_seconds(), 3),
                "outcome": row["outcome"],
                "error": error,
                "next_attempt_at": rfc3339(row["next_attempt_at"]),
                "backoff_s": None if after is None else round(max(0.0, (after - finished).total_seconds()), 3),
            }
        )
    return views


def _record_attempts(conn: Connection, written: Sequence[FinishRequest], now: datetime) -> None:
    """The history rows of the batch's written finishes: one multi-row INSERT, in the finish's transaction."""
    rows = [attempt_row(request, now) for request in written if request.attempt is not None]
    if rows:
        conn.execute(_attempt_insert(conn.dialect.name), rows)


@functools.cache
def _attempt_insert(dialect: str) -> Insert:
    """INSERT of history rows that skips one written already.

    NOTE: an attempt ends once (its finish needs the live lease), so a conflict is not expected; but a
    history row must never make the store refuse the outcome it rides with.
    """
    if dialect == "postgresql":
        return postgresql.insert(job_attempts).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(job_attempts).on_conflict_do_nothing()
    return insert(job_attempts)


def _finish_values(request: FinishRequest, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": request.status.value,
        "updated_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "error": request.error,
    }
    if request.callback is not None:
        values["callback_job_id"] = request.callback.id
    if request.callback_error is not None:
        values["callback_error"] = request.callback_error
    if request.status == JobStatus.RETRYING:
        values["next_attempt_at"] = request.next_attempt_at
    else:
        values["finished_at"] = now
    if request.status == JobStatus.SUCCEEDED:
        values.update(result=request.result, result_url=request.result_url)
    if request.status == JobStatus.FAILED:
        values["dead"] = True
    return values


# NOTE: the statements are built once: building one costs more than running it.

#: The rows of a batch of claims, locked (PostgreSQL) until the batch commits.
_CLAIM_SELECT = select(jobs).where(InList(jobs.c.id, "ids")).with_for_update()
_CLAIM_UPDATE = (
    update(jobs)
    .where(InList(jobs.c.id, "ids"))
    .values(
        status=JobStatus.RUNNING.value,
        attempts=jobs.c.attempts + 1,
        started_at=bindparam("now"),
        next_attempt_at=None,
        deferred=None,
        lease_owner=bindparam("owner"),
        lease_expires_at=bindparam("lease_expires_at"),
        updated_at=bindparam("now"),
    )
)

_UNCLAIM = (
    update(jobs)
    .where(
        InList(jobs.c.id, "ids"),
        jobs.c.status == JobStatus.RUNNING.value,
        jobs.c.lease_owner == bindparam("owner"),
    )
    .values(
        status=JobStatus.QUEUED.value,
        attempts=jobs.c.attempts - 1,
        started_at=None,
        lease_owner=None,
        lease_expires_at=None,
        updated_at=bindparam("now"),
    )
)


@functools.cache
def _plain_finish_update(columns: tuple[str, ...]) -> Update:
    """The finish of many rows with the same values (``columns`` are the ``b_``-prefixed names)."""
    return (
        update(jobs)
        .where(
            InList(jobs.c.id, "ids"),
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.lease_owner == bindparam("owner"),
        )
        .values(**{column.removeprefix("b_"): bindparam(column) for column in columns})
    )


@functools.cache
def _finish_update(columns: tuple[str, ...]) -> Update:
    """The finish UPDATE writing ``columns``, one row per parameter set."""
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("b_id"),
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.lease_owner == bindparam("b_owner"),
        )
        .values(**{column: bindparam(f"b_{column}") for column in columns})
    )

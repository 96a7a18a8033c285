"""Unique jobs and debounce, decided in the submission's own transaction.

A job submitted with ``unique_for_s`` or ``debounce_s`` carries a uniqueness key: the hash of
its task and of its given ``unique_key`` or, without one, of its arguments' canonical JSON
(``unique_hash``). The jobs table's partial unique index lets one waiting or running job hold
a key at a time, so the decision here is race-free across API processes: two submissions that
both find no holder cannot both insert one, and the loser's transaction, retried by
``Submissions.insert_groups``, finds the winner's job.

- unique: a submission whose key is held returns the holder (created False, like an
  idempotent replay, marked ``extra["deduplicated"] = "unique"``). A holder whose
  ``unique_until`` has passed gives up its key, and the new job is inserted.
- debounce: the new job replaces the holder. A waiting holder is cancelled (its error says by
  which job), a running one keeps running but gives up its key; the new job waits
  ``debounce_s`` (set by validation), so of a burst only the last runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from shared.job import WAITING_STATUSES, Job, JobStatus
from shared.store.models import jobs
from shared.store.sql import InList

#: Statuses in which a job holds its key (the index's predicate, ``models.UNIQUE_HOLDING``).
HOLDING = [*(status.value for status in WAITING_STATUSES), JobStatus.RUNNING.value]
#: What ``Job.extra`` says of a job returned in place of a new one by a held uniqueness key.
DEDUPLICATED = "deduplicated"


def unique_hash(task: str, args: Any, unique_key: str | None, namespace: str | None = None) -> str:
    """The key a job holds: its task with its given key, or with its arguments' canonical JSON, in its
    tenant's namespace (none: the namespace-less jobs')."""
    subject = f"key:{unique_key}" if unique_key is not None else "args:" + canonical_json(args)
    scope = f"ns:{namespace}\x00" if namespace is not None else ""
    return hashlib.sha256(f"{scope}{task}\x00{subject}".encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_debounced(job: Job) -> bool:
    return bool(job.extra.get("debounce_s"))


_HOLDERS = select(jobs).where(InList(jobs.c.unique_key, "keys"), jobs.c.status.in_(HOLDING))
_RELEASE = update(jobs).where(jobs.c.id == bindparam("holder")).values(unique_key=None)
_REPLACE = (
    update(jobs)
    .where(jobs.c.id == bindparam("holder"), jobs.c.status.in_([s.value for s in WAITING_STATUSES]))
    .values(
        status=JobStatus.CANCELLED.value,
        unique_key=None,
        cancel_requested=True,
        finished_at=bindparam("now"),
        updated_at=bindparam("now"),
        next_attempt_at=None,
        error=bindparam("error"),
    )
)


def settle_unique(conn: Connection, new_jobs: Sequence[Job], now: datetime) -> dict[str, Job]:
    """Decide every new job that carries a uniqueness key; returns, by new job id, the job
    returned in its place (those are not to be inserted). Releases or cancels the holders
    that give their key up, in ``conn``'s transaction."""
    keyed = [job for job in new_jobs if job.unique_key]
    if not keyed:
        return {}
    keys = sorted({job.unique_key or "" for job in keyed})
    holders = {job.unique_key: job for job in map(Job.from_row, conn.execute(_HOLDERS, {"keys": keys}))}
    instead: dict[str, Job] = {}
    for job in keyed:
        holder = holders.get(job.unique_key)
        if holder is not None and not is_debounced(job) and not _lapsed(holder, now):
            instead[job.id] = dataclasses.replace(holder, extra={**holder.extra, DEDUPLICATED: "unique"})
            continue
        if holder is not None and holder.id not in {j.id for j in keyed}:
            give_up(conn, holder, job, now)
        elif holder is not None:
            # NOTE: an earlier job of this same transaction: not inserted yet, so it is dropped instead.
            instead[holder.id] = job
        holders[job.unique_key] = job
    return instead


def _lapsed(holder: Job, now: datetime) -> bool:
    return holder.unique_until is not None and holder.unique_until <= now


def give_up(conn: Connection, holder: Job, successor: Job, now: datetime) -> None:
    """The holder lets ``successor`` take its key: cancelled if debounced away while waiting, else released."""
    if is_debounced(successor):
        error = {"type": "Debounced", "message": f"replaced by job {successor.id}", "retryable": False}
        if conn.execute(_REPLACE, {"holder": holder.id, "now": now, "error": error}).rowcount:
            return
    conn.execute(_RELEASE, {"holder": holder.id})

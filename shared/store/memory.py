"""``MemoryJobStore``: the job store's twin in memory, for unit tests of the worker and the scheduler.

Real code, not a mock: a dict of ``Job`` rows with the SQL store's rules for
every method of ``JobStoreProtocol``, plus ``insert``, ``get``, ``claim`` and
``cancel`` to set a test up and look at the rows. A claim is decided, and a
finish's values made, by the SQL store's own functions (``shared/store/attempts.py``),
so the twin cannot drift from them; ``tests/shared/store/test_memory.py`` runs
the same calls on both stores. Time is read from a ``Clock`` (``shared/clock.py``), so
with a ``FakeClock`` a lease expires when the test says so.

Left out: what only a database gives (rows shared between processes, column
types and lengths) and the methods only the API calls (listing, dead letters).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from shared.clock import Clock, SystemClock
from shared.errors import Conflict, NotFound
from shared.ids import id_lower_bound
from shared.job import FINAL_STATUSES, WAITING_STATUSES, Job, JobStatus, due_for_broker
from shared.store.attempts import (
    Claim,
    ClaimOutcome,
    ClaimRequest,
    FinishRequest,
    _finish_values,
    attempt_row,
    decide_claim,
)
from shared.store.uniqueness import DEDUPLICATED, HOLDING

_HOLDING = frozenset(JobStatus(status) for status in HOLDING)


class MemoryJobStore:
    """Job rows in a dict, each method atomic under one lock, as each SQL method is one transaction.

    Rows go in and come out as copies, as they do through SQL: a caller changing a
    ``Job`` it holds changes no row.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._rows: dict[str, Job] = {}
        #: Outbox entry id -> the ids of the jobs it lists.
        self._outbox: dict[str, list[str]] = {}
        #: Job id -> attempt number -> its ``job_attempts`` row.
        self._attempts: dict[str, dict[int, dict[str, Any]]] = {}
        self._lock = threading.RLock()

    # -- setting a test up and looking at the rows --------------------------

    def insert(self, new_jobs: Sequence[Job], *, outbox_id: str | None = None) -> list[tuple[Job, bool]]:
        """As ``JobStore.insert``: (job, created) pairs, the stored job for a repeated idempotency key."""
        keys = [job.idempotency_key for job in new_jobs if job.idempotency_key]
        if len(keys) != len(set(keys)):
            raise Conflict("the same idempotency key appears twice in one request")
        with self._lock:
            by_key = {row.idempotency_key: row for row in self._rows.values() if row.idempotency_key}
            out: list[tuple[Job, bool]] = []
            for job in new_jobs:
                found = by_key.get(job.idempotency_key) if job.idempotency_key else None
                if found is None:
                    if job.id in self._rows or any(job.id == other.id for other, _ in out):
                        # SQL refuses it too (the primary key), with its driver's IntegrityError.
                        raise ValueError(f"a job with id {job.id!r} exists already")
                    out.append((job, True))
                elif found.request_hash != job.request_hash:
                    raise Conflict(f"idempotency key {job.idempotency_key!r} was used with a different request")
                else:
                    out.append((copy.deepcopy(found), False))
            now = self.clock.now()
            out = self._settle_unique(out, now)
            created = [job for job, is_new in out if is_new]
            handed = [job for job in created if not job.held and due_for_broker(job, now)] if outbox_id else []
            for job in handed:
                job.published_at = now
            if outbox_id and handed:
                self._outbox[outbox_id] = [job.id for job in handed]
            for job in created:
                self._rows[job.id] = copy.deepcopy(job)
            return out

    def _settle_unique(self, out: list[tuple[Job, bool]], now: datetime) -> list[tuple[Job, bool]]:
        """As ``shared.store.uniqueness.settle_unique``: a held key returns its holder, or a debounce replaces it."""
        holders = {row.unique_key: row for row in self._rows.values() if row.unique_key and row.status in _HOLDING}
        settled: list[tuple[Job, bool]] = []
        for job, is_new in out:
            holder = holders.get(job.unique_key) if is_new and job.unique_key else None
            if holder is None:
                settled.append((job, is_new))
                holders.update({job.unique_key: job} if is_new and job.unique_key else {})
                continue
            lapsed = holder.unique_until is not None and holder.unique_until <= now
            if not job.extra.get("debounce_s") and not lapsed:
                settled.append((dataclasses.replace(copy.deepcopy(holder), extra={DEDUPLICATED: "unique"}), False))
                continue
            if job.extra.get("debounce_s") and holder.status in WAITING_STATUSES:
                holder.status, holder.finished_at, holder.cancel_requested = JobStatus.CANCELLED, now, True
                holder.error = {"type": "Debounced", "message": f"replaced by job {job.id}", "retryable": False}
            holder.unique_key = None
            settled = [(job, False) if pair[0] is holder else pair for pair in settled]
            settled.append((job, True))
            holders[job.unique_key or ""] = job
        return settled

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            return copy.deepcopy(row)

    def attempt_history(self, job_id: str) -> list[dict[str, Any]]:
        """As ``JobStore.attempt_history``: the ended attempts of a job, first first."""
        with self._lock:
            return copy.deepcopy([row for _, row in sorted(self._attempts.get(job_id, {}).items())])

    def claim(self, job_id: str, *, owner: str, lease_s: float) -> Claim:
        return self.commit_batch([ClaimRequest(job_id, owner, lease_s)], [])[0][0]

    def cancel(self, job_id: str) -> Job:
        """As ``JobStore.cancel``: a waiting job is cancelled at once, a running one flagged."""
        with self._lock:
            row = self._rows.get(job_id)
            if row is None:
                raise NotFound(f"no job with id {job_id!r}")
            if row.status in FINAL_STATUSES:
                raise Conflict(f"job {job_id} is already {row.status.value}")
            now = self.clock.now()
            row.cancel_requested = True
            row.updated_at = now
            if row.status in WAITING_STATUSES:
                row.status = JobStatus.CANCELLED
                row.finished_at = now
                row.lease_owner = row.lease_expires_at = row.next_attempt_at = None
            return copy.deepcopy(row)

    # -- the worker ----------------------------------------------------------

    def commit_batch(
        self, claims: Sequence[ClaimRequest], finishes: Sequence[FinishRequest]
    ) -> tuple[list[Claim], list[bool]]:
        """As ``shared.store.attempts.commit_attempts``: every claim decided on the rows as they were
        before the batch (but a job claimed in it is taken for the rest), then the finishes."""
        with self._lock:
            now = self.clock.now()
            found = {request.job_id: self._rows[request.job_id] for request in claims if request.job_id in self._rows}
            outcomes: list[Claim] = []
            writes: list[tuple[str, dict[str, Any]]] = []
            claimed_here: set[str] = set()
            for request in claims:
                claim, values = decide_claim(found.get(request.job_id), request, now)
                if request.job_id in claimed_here:
                    claim, values = Claim(ClaimOutcome.DUPLICATE, found[request.job_id]), {}
                if claim.outcome is ClaimOutcome.CLAIMED and claim.job is not None:
                    claimed_here.add(request.job_id)
                    found[request.job_id] = self._rows[request.job_id] = claim.job
                elif values:
                    writes.append((request.job_id, values))
                outcomes.append(Claim(claim.outcome, copy.deepcopy(claim.job)))
            for job_id, values in writes:
                _write(self._rows[job_id], values)
            return outcomes, [self._finish(request, now) for request in finishes]

    def _finish(self, request: FinishRequest, now: datetime) -> bool:
        row = self._rows.get(request.job_id)
        if row is None or row.status is not JobStatus.RUNNING or row.lease_owner != request.owner:
            return False
        _write(row, copy.deepcopy(_finish_values(request, now)))
        if request.attempt is not None:
            self._attempts.setdefault(request.job_id, {}).setdefault(request.attempt, attempt_row(request, now))
        if request.callback is not None:
            # As in SQL: the callback's row (and its outbox entry) in the outcome's commit.
            self.insert([copy.deepcopy(request.callback)], outbox_id=request.callback_outbox_id)
        return True

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
        request = FinishRequest(job_id, owner, status, result, result_url, error, next_attempt_at)
        return self.commit_batch([], [request])[1][0]

    def unclaim(self, owner: str, job_ids: Sequence[str]) -> int:
        with self._lock:
            now = self.clock.now()
            given_back = 0
            for row in self._owned_rows(owner, job_ids):
                if row.status is JobStatus.RUNNING:
                    row.status = JobStatus.QUEUED
                    row.attempts -= 1
                    row.started_at = row.lease_owner = row.lease_expires_at = None
                    row.updated_at = now
                    given_back += 1
            return given_back

    def defer(self, job_id: str, deferred: dict[str, Any], *, scheduled: bool) -> bool:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.status not in WAITING_STATUSES:
                return False
            row.deferred = copy.deepcopy(deferred)
            row.status = JobStatus.SCHEDULED if scheduled else row.status
            row.updated_at = self.clock.now()
            return True

    def fail_undelivered(
        self,
        job_id: str,
        error: dict[str, Any],
        *,
        callback: Job | None = None,
        callback_outbox_id: str | None = None,
        callback_error: str | None = None,
    ) -> bool:
        with self._lock:
            row = self._rows.get(job_id)
            if row is None or row.status in FINAL_STATUSES:
                return False
            now = self.clock.now()
            row.status, row.error, row.dead = JobStatus.FAILED, copy.deepcopy(error), True
            row.finished_at = row.updated_at = now
            row.lease_owner = row.lease_expires_at = None
            row.callback_job_id = None if callback is None else callback.id
            row.callback_error = callback_error
            if callback is not None:
                self.insert([copy.deepcopy(callback)], outbox_id=callback_outbox_id)
            return True

    def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self._lock:
            row = self._rows.get(job_id)
            if row is not None and row.status is JobStatus.RUNNING:
                row.progress = copy.deepcopy(progress)
                row.updated_at = self.clock.now()

    def renew_leases(self, owner: str, job_ids: Iterable[str], *, lease_s: float) -> None:
        with self._lock:
            until = self.clock.now() + timedelta(seconds=lease_s)
            for row in self._owned_rows(owner, job_ids):
                row.lease_expires_at = until

    def cancel_requested_among(self, job_ids: Iterable[str]) -> list[str]:
        with self._lock:
            rows = (self._rows.get(job_id) for job_id in dict.fromkeys(job_ids))
            return [row.id for row in rows if row is not None and row.cancel_requested]

    def _owned_rows(self, owner: str, job_ids: Iterable[str]) -> list[Job]:
        """The rows of ``job_ids`` (each once) whose lease ``owner`` holds."""
        rows = (self._rows.get(job_id) for job_id in dict.fromkeys(job_ids))
        return [row for row in rows if row is not None and row.lease_owner == owner]

    # -- the scheduler's housekeeping -----------------------------------------

    def release_leases_of(self, owners: Iterable[str]) -> int:
        names = set(owners)
        with self._lock:
            now = self.clock.now()
            released = [
                row for row in self._rows.values() if row.lease_owner in names and row.status is JobStatus.RUNNING
            ]
            for row in released:
                row.lease_expires_at = now
            return len(released)

    def unpublished(self, *, older_than: datetime, limit: int = 500, due_before: datetime | None = None) -> list[Job]:
        def due(row: Job) -> bool:
            when = row.next_attempt_at or row.scheduled_for
            return due_before is None or when is None or when <= due_before

        with self._lock:
            rows = [
                row
                for row in self._rows.values()
                if row.published_at is None and not row.held and row.created_at < older_than and due(row)
            ]
            rows.sort(key=lambda row: row.created_at)
            return copy.deepcopy(rows[:limit])

    def mark_published(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            now = self.clock.now()
            for job_id in dict.fromkeys(job_ids):
                row = self._rows.get(job_id)
                if row is not None and row.published_at is None:
                    row.published_at = now

    def outbox_left(self, *, older_than: datetime, limit: int = 100) -> list[tuple[str, list[Job]]]:
        # NOTE: entry ids are UUIDv7, so "written before" is a bound on the id, as in SQL.
        bound = id_lower_bound(older_than)
        with self._lock:
            entries = sorted(entry_id for entry_id in self._outbox if entry_id < bound)[:limit]
            return [(entry_id, self._waiting(self._outbox[entry_id])) for entry_id in entries]

    def _waiting(self, job_ids: list[str]) -> list[Job]:
        rows = (self._rows.get(job_id) for job_id in job_ids)
        return [copy.deepcopy(row) for row in rows if row is not None and row.status in WAITING_STATUSES]

    def outbox_sent(self, entry_ids: Sequence[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                self._outbox.pop(entry_id, None)

    def waiting_published(self, *, older_than: datetime, limit: int = 5000) -> list[Job]:
        bound = id_lower_bound(older_than)
        with self._lock:
            rows = sorted(
                (
                    row
                    for row in self._rows.values()
                    if row.status in WAITING_STATUSES
                    and row.id < bound
                    and row.published_at is not None
                    and not row.held
                ),
                key=lambda row: row.id,
            )
            return copy.deepcopy(rows[:limit])


def _write(row: Job, values: dict[str, Any]) -> None:
    """Set columns of ``row`` as an UPDATE would (a status may come as its text, as SQL takes it)."""
    for name, value in values.items():
        setattr(row, name, JobStatus(value) if name == "status" else value)

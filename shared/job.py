"""The job record and its lifecycle, as the store keeps it and the API shows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from shared.tracing import trace_id_of


class JobStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
#: States a worker may claim a job from (a running one only when its lease has expired).
WAITING_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.RETRYING})


#: Dramatiq's Redis broker refuses delays of 7 days or more; the relay holds longer ones.
MAX_BROKER_DELAY = timedelta(days=6)


def utcnow() -> datetime:
    return datetime.now(UTC)


def due_for_broker(job: Job, now: datetime) -> bool:
    """Whether the broker takes ``job`` now: its time (retry, eta or delay) is at most ``MAX_BROKER_DELAY`` away."""
    due = job.next_attempt_at or job.scheduled_for
    return due is None or due - now <= MAX_BROKER_DELAY


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    """One job row."""

    id: str
    task: str
    queue: str
    status: JobStatus
    args: dict[str, Any]
    max_retries: int
    created_at: datetime
    updated_at: datetime
    priority: int = 0
    time_limit_s: float | None = None
    max_age_s: float | None = None
    attempts: int = 0
    progress: dict[str, Any] | None = None
    result: Any = None
    result_url: str | None = None
    error: dict[str, Any] | None = None
    scheduled_for: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    workflow_id: str | None = None
    schedule_id: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    request_id: str | None = None
    published_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    dead: bool = False
    held: bool = False
    #: Why it waits although due: ``{"reason": "concurrency" | "rate_limit", "until": ms or None}`` (flow limits).
    deferred: dict[str, Any] | None = None
    #: The job submitted as this one's on_success / on_failure callback, or why none could be.
    callback_job_id: str | None = None
    callback_error: str | None = None
    #: The W3C traceparent of the span it was submitted in (``shared/tracing.py``); None when tracing is off.
    traceparent: str | None = None
    #: Unique jobs and debounce (``shared/store/uniqueness.py``): the hash of the task and its uniqueness
    #: key, held while the job waits or runs, and until when at most (None: as long as that).
    unique_key: str | None = None
    unique_until: datetime | None = None
    #: Tenants: the submitting API key's namespace (None: none) and name.
    namespace: str | None = None
    submitted_by: str | None = None
    #: Push: where its final state is POSTed, whether that is still to do, and the delivery job doing it.
    callback_url: str | None = None
    push_due: bool = False
    push_job_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Any) -> Job:
        data = dict(row._mapping)
        data["status"] = JobStatus(data["status"])
        return cls(**data)

    def to_api(self, *, traceback: bool = False) -> dict[str, Any]:
        """The job as API.md shows it; the error's ``traceback`` only when asked (admin scope)."""
        body: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "status": self.status.value,
            "args": self.args,
            "progress": self.progress,
            "result": self.result,
            "result_url": self.result_url,
            "error": self.error if traceback or not self.error else _without_traceback(self.error),
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "priority": self.priority,
            "time_limit_s": self.time_limit_s,
            "max_age_s": self.max_age_s,
            "created_at": rfc3339(self.created_at),
            "scheduled_for": rfc3339(self.scheduled_for),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "next_attempt_at": rfc3339(self.next_attempt_at),
            "workflow_id": self.workflow_id,
            "schedule_id": self.schedule_id,
            "deferred": _deferred(self.deferred) if self.deferred and not self.status.is_final else None,
            "callback_job_id": self.callback_job_id,
            "callback_error": self.callback_error,
            "trace_id": trace_id_of(self.traceparent),
            "unique_key": self.unique_key,
            "unique_until": rfc3339(self.unique_until),
            "namespace": self.namespace,
            "submitted_by": self.submitted_by,
            "callback_url": self.callback_url,
        }
        if self.cancel_requested and not self.status.is_final:
            body["cancel_requested"] = True
        return body


def _deferred(deferred: dict[str, Any]) -> dict[str, Any]:
    """The row's deferral as the API shows it: the reason, and until when (RFC 3339) for a rate limit."""
    until_ms = deferred.get("until_ms")
    until = rfc3339(datetime.fromtimestamp(until_ms / 1000, UTC)) if isinstance(until_ms, int | float) else None
    return {"reason": deferred.get("reason"), "until": until}


def _without_traceback(error: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in error.items() if key != "traceback"}

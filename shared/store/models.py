"""The job store's tables (SQLAlchemy Core). Alembic migrations create them; a test keeps both equal."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

#: The rows that hold their uniqueness key: a key, and a waiting or running status.
UNIQUE_HOLDING = "unique_key IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying', 'running')"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive text) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JsonResult(TypeDecorator[Any]):
    """A job's result: JSON, with every integer exact on SQLite too.

    NOTE: a column declared JSON has NUMERIC affinity in SQLite, which turns a bare number
    stored as text into a number, and one beyond 64 bits into a float (2**64 + 1 came back
    as 1.8446744073709552e19). A result may be a bare number, so on SQLite its JSON text is
    stored as a BLOB, which no affinity converts; rows written as text still read back.
    """

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: Any) -> bytes | None:
            return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

        return process

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        def process(value: Any) -> Any:
            return json.loads(value) if isinstance(value, bytes | str) else value

        return process


jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("task", String(200), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("args", JSON, nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("max_retries", Integer, nullable=False),
    Column("time_limit_s", Float, nullable=True),
    Column("max_age_s", Float, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("progress", JSON, nullable=True),
    Column("result", JsonResult, nullable=True),
    Column("result_url", Text, nullable=True),
    Column("error", JSON, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("scheduled_for", UtcDateTime, nullable=True),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("next_attempt_at", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("workflow_id", String(36), nullable=True),
    Column("schedule_id", String(200), nullable=True),
    # NOTE: 300: a namespaced key is stored as "<namespace>\x1f<key>" (validation.stored_idempotency_key).
    Column("idempotency_key", String(300), nullable=True),
    Column("request_hash", String(64), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("published_at", UtcDateTime, nullable=True),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # In the dead-letter queue: failed for good and neither requeued nor purged since.
    Column("dead", Boolean, nullable=False, server_default=text("false")),
    # A workflow step waiting for its predecessors: never published until released.
    Column("held", Boolean, nullable=False, server_default=text("false")),
    # Why a waiting job has not started yet: a concurrency or rate limit of its task (migration 0007).
    Column("deferred", JSON, nullable=True),
    # The on_success / on_failure callback job submitted in the outcome's commit, or why none was (0009).
    Column("callback_job_id", String(36), nullable=True),
    Column("callback_error", Text, nullable=True),
    # The W3C traceparent of the span the job was submitted in (migration 0010): its trace, across retries.
    Column("traceparent", String(55), nullable=True),
    # Unique jobs and debounce (migration 0011): the hash of the task and its uniqueness key, held
    # while the job waits or runs (the partial unique index below), and until when at most.
    Column("unique_key", String(64), nullable=True),
    Column("unique_until", UtcDateTime, nullable=True),
    # Tenants (migration 0012): the namespace of the API key that submitted the job, and that key's name.
    Column("namespace", String(64), nullable=True),
    Column("submitted_by", String(200), nullable=True),
    # Push (migration 0017): where to POST the final state, whether that is still due, and the delivery job.
    Column("callback_url", Text, nullable=True),
    Column("push_due", Boolean, nullable=False, server_default=text("false")),
    Column("push_job_id", String(36), nullable=True),
    Index("ix_jobs_status_id", "status", "id"),
    Index("ix_jobs_task_id", "task", "id"),
    Index("ix_jobs_queue_id", "queue", "id"),
    # A queue's jobs in one status (migration 0014): the list's most common pair of filters.
    Index("ix_jobs_queue_status_id", "queue", "status", "id"),
    Index(
        "ix_jobs_unpublished",
        "created_at",
        sqlite_where=text("published_at IS NULL"),
        postgresql_where=text("published_at IS NULL"),
    ),
    Index("ix_jobs_dead", "queue", "id", sqlite_where=text("dead"), postgresql_where=text("dead")),
    Index("ix_jobs_push_due", "status", "id", sqlite_where=text("push_due"), postgresql_where=text("push_due")),
)

#: One entry per commit whose new jobs go straight to Redis: their rows are written already
#: marked published, and the entry stands until the publish is done, then it is deleted.
#: The relay publishes the jobs of an entry left behind (a crash or Redis away), so no
#: job is lost and no job row is written twice.
outbox = Table(
    "outbox",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_ids", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)


def _with_value(column: Column[Any]) -> dict[str, Any]:
    """The keyword arguments of an index over the rows where ``column`` has a value."""
    return {"sqlite_where": column.is_not(None), "postgresql_where": column.is_not(None)}


# NOTE: partial on the mostly-NULL columns: every query compares them to a value, so a row
# without one never needs an entry (migration 0006).
Index("ix_jobs_workflow_id", jobs.c.workflow_id, jobs.c.id, **_with_value(jobs.c.workflow_id))
Index("ix_jobs_schedule_id", jobs.c.schedule_id, jobs.c.id, **_with_value(jobs.c.schedule_id))
Index("ux_jobs_idempotency_key", jobs.c.idempotency_key, unique=True, **_with_value(jobs.c.idempotency_key))
Index("ix_jobs_lease_owner", jobs.c.lease_owner, **_with_value(jobs.c.lease_owner))
Index("ix_jobs_namespace_id", jobs.c.namespace, jobs.c.id, **_with_value(jobs.c.namespace))
# The jobs finished in a time range (migration 0015): the console's charts of the last hour.
Index("ix_jobs_finished_at", jobs.c.finished_at, **_with_value(jobs.c.finished_at))
# NOTE: only a waiting or running job holds its uniqueness key: a finished one frees it by its status
# change alone, so no worker code has to release it.
Index("ux_jobs_unique_key", jobs.c.unique_key, unique=True, sqlite_where=text(UNIQUE_HOLDING),
      postgresql_where=text(UNIQUE_HOLDING))  # fmt: skip

#: One row per attempt that ended (issue #18): who ran it, when, how it ended and why. Written by the
#: worker in the same statement group as the attempt's finish (``shared/store/attempts.py``), read by
#: the job's timeline (``GET /v1/jobs/{id}/attempts``, the console's job page); pruned with its job.
job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker", String(100), nullable=True),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error", JSON, nullable=True),
    # A retried attempt's next try (its backoff ends then).
    Column("next_attempt_at", UtcDateTime, nullable=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("queue", String(64), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("registered_at", UtcDateTime, nullable=False),
    Column("registered_by", String(200), nullable=False),
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("type", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    # Job ids in step order; the callback (chord) is separate.
    Column("job_ids", JSON, nullable=False),
    Column("callback_job_id", String(36), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    # Tenants (migration 0013): the namespace of the API key that submitted it (None: none).
    Column("namespace", String(64), nullable=True),
    # The workflows still running (migration 0014): the stale-workflow check reads these only.
    Index(
        "ix_workflows_running",
        "updated_at",
        sqlite_where=text("status = 'running'"),
        postgresql_where=text("status = 'running'"),
    ),
    # Push (migration 0017), as on jobs.
    Column("callback_url", Text, nullable=True),
    Column("push_due", Boolean, nullable=False, server_default=text("false")),
    Column("push_job_id", String(36), nullable=True),
    Index("ix_workflows_push_due", "status", "id", sqlite_where=text("push_due"), postgresql_where=text("push_due")),
)

schedules = Table(
    "schedules",
    metadata,
    # NOTE: 200: a namespaced key's schedule is stored as "<namespace>:<id>" (services/api/namespaces.py).
    Column("id", String(200), primary_key=True),
    Column("task", String(200), nullable=False),
    Column("args", JSON, nullable=False),
    # Exactly one of cron (5 fields, read in `timezone`) and interval_s (whole seconds).
    Column("cron", String(200), nullable=True),
    Column("interval_s", Integer, nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("misfire", String(16), nullable=False),
    Column("misfire_grace_s", Float, nullable=False),
    Column("source", String(16), nullable=False),
    # The first tick not handled yet (None while disabled) and the last tick that made a job.
    Column("next_run_at", UtcDateTime, nullable=True),
    Column("last_run_at", UtcDateTime, nullable=True),
    # Bumped on every change of the definition: the scheduler leader reloads a schedule whose version moved.
    Column("version", Integer, nullable=False),
    # Fingerprint of the schedules.toml entry last synced into this row (file schedules only).
    Column("file_hash", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Tenants (migration 0013): the namespace of the API key that created it (None: the operator's).
    Column("namespace", String(64), nullable=True),
    CheckConstraint("(cron IS NULL) <> (interval_s IS NULL)", name="ck_schedules_one_timing"),
)

#: Paused queues: a row while the queue is paused (the source of truth; workers read a Redis mirror,
#: shared/broker/pausing.py).
queue_pauses = Table(
    "queue_pauses",
    metadata,
    Column("queue", String(64), primary_key=True),
    Column("paused_at", UtcDateTime, nullable=False),
    Column("paused_by", String(200), nullable=False),
)

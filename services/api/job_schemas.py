"""The schemas of a job as the API shows it, and of the delivery of its final state (``callback_delivery``)."""

from __future__ import annotations

from services.api.schema_parts import (
    BOOLEAN,
    COUNT,
    DATE_TIME,
    ID,
    NUMBER,
    PRIORITY,
    QUEUE,
    STRING,
    Schema,
    closed,
    nullable,
    ref,
)
from shared.job import JobStatus


def job_schema() -> Schema:
    error = {
        "type": "object",
        "properties": {"type": STRING, "message": STRING, "retryable": BOOLEAN},
        "required": ["type", "message"],
    }
    props: dict[str, Schema] = {
        "id": ID,
        "task": STRING,
        "queue": QUEUE,
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "args": {"type": "object"},
        "progress": nullable({"type": "object"}),
        "result": {"description": "Any JSON the task returned, or null."},
        "result_url": nullable(STRING),
        "error": nullable(error),
        "attempts": COUNT,
        "max_retries": COUNT,
        "priority": PRIORITY,
        "time_limit_s": nullable(NUMBER),
        "max_age_s": nullable(NUMBER),
        "created_at": DATE_TIME,
        "scheduled_for": nullable(DATE_TIME),
        "started_at": nullable(DATE_TIME),
        "finished_at": nullable(DATE_TIME),
        "next_attempt_at": nullable(DATE_TIME),
        "workflow_id": nullable(ID),
        "schedule_id": nullable(STRING),
        "deferred": nullable(
            closed(
                {"reason": {"type": "string", "enum": ["concurrency", "rate_limit"]}, "until": nullable(DATE_TIME)},
                ["reason", "until"],
            )
        ),
        "callback_job_id": nullable(ID),
        "callback_error": nullable(STRING),
        "trace_id": {
            "type": ["string", "null"],
            "pattern": "^[0-9a-f]{32}$",
            "description": "The OpenTelemetry trace of the job (its request or schedule fire); null when untraced.",
        },
    }
    props["unique_key"] = nullable({"type": "string", "description": "Hash of the task and its uniqueness key."})
    props["unique_until"] = nullable(DATE_TIME)
    props["namespace"] = nullable({"type": "string", "description": "The submitting key's namespace (tenant)."})
    props["submitted_by"] = nullable({"type": "string", "description": "The name of the key that submitted it."})
    props["callback_url"] = nullable({"type": "string", "description": "Where its final state is POSTed."})
    required = list(props)
    props["callback_delivery"] = nullable(ref("CallbackDelivery"))
    props["cancel_requested"] = {
        "type": "boolean",
        "const": True,
        "description": "Present while a running attempt is interrupted.",
    }
    return closed(props, required)


def delivery_schema() -> Schema:
    """How the push of a final state went: its ``webhooks.deliver`` job."""
    return closed(
        {
            "job_id": {**ID, "description": "The delivery job (GET /v1/jobs/{id}); also the event's id."},
            "status": {"type": "string", "enum": [s.value for s in JobStatus]},
            "attempts": COUNT,
            "status_code": nullable({"type": "integer", "description": "The receiver's last HTTP status."}),
            "error": nullable({"type": "string", "description": "Why the last attempt failed."}),
            "last_attempt_at": nullable(DATE_TIME),
            "next_attempt_at": nullable(DATE_TIME),
            "delivered_at": nullable(DATE_TIME),
        },
        ["job_id", "status", "attempts", "status_code", "error", "last_attempt_at", "next_attempt_at",
         "delivered_at"],
        description="Present on GET of a job or workflow submitted with a callback_url: null until it ended.",
    )  # fmt: skip

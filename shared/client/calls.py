"""Every API call as data (method, path, body, query, whether a repeat is safe), for both httpx clients.

The sync ``Client`` and the ``AsyncClient`` differ only in how they send; what each call is, and
how an answer or a failure is read, lives here once. ``idempotent`` decides what a retry may do:
a request the server never received (connection refused) is always sent again; one it may have
received (a 503, a dropped answer) only when repeating it cannot do the work twice.
"""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from shared.client import JobOptions, error_for_response, job_request

#: Statuses that a retry may cure: the API answers 503 while Redis or the store is away.
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None
    query: Mapping[str, Any] = field(default_factory=dict)
    #: Safe to send again after the server may have acted on it.
    idempotent: bool = False
    #: The key of the answer to return (``"items"``), or None for the whole answer.
    unwrap: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.query.items() if v is not None}


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` in all; full-jitter backoff from ``min_s`` doubling to ``max_s``, or the server's Retry-After."""

    attempts: int = 4
    min_s: float = 0.2
    max_s: float = 5.0

    def delay_s(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.max_s)
        return random.uniform(0, min(self.max_s, self.min_s * 2 ** (attempt - 1)))


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def read_answer(call: Call, status: int, content_type: str, raw: bytes) -> Any:
    """The decoded answer of a 2xx, or the typed ``ClientError`` raised for any other status."""
    if status >= 400:
        raise error_for_response(status, content_type, raw, method=call.method, path=call.path)
    if not raw:
        return None
    if content_type.split(";")[0].strip().endswith("json"):
        value = json.loads(raw)
        return value[call.unwrap] if call.unwrap and isinstance(value, dict) else value
    return raw


# -- jobs ----------------------------------------------------------------------------------------


def submit(task: str, args: Mapping[str, Any] | None, options: JobOptions) -> Call:
    body = job_request(task, args, **options)
    # NOTE: with an idempotency key, a repeat returns the first job, so a retry cannot run it twice.
    return Call("POST", "/v1/jobs", body=body, idempotent=bool(body.get("idempotency_key")))


def submit_batch(jobs: Sequence[Mapping[str, Any]]) -> Call:
    every_keyed = bool(jobs) and all(job.get("idempotency_key") for job in jobs)
    return Call(
        "POST", "/v1/jobs/batch", body={"jobs": [dict(job) for job in jobs]}, idempotent=every_keyed, unwrap="jobs"
    )


def get_job(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{quote(job_id)}", idempotent=True)


def job_result(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{quote(job_id)}/result", idempotent=True)


def cancel_job(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{quote(job_id)}/cancel")


def retry_job(job_id: str) -> Call:
    return Call("POST", f"/v1/jobs/{quote(job_id)}/retry")


def list_jobs(query: Mapping[str, Any]) -> Call:
    return Call("GET", "/v1/jobs", query=query, idempotent=True)


# -- tasks, queues, dead letters -----------------------------------------------------------------


def tasks() -> Call:
    return Call("GET", "/v1/tasks", idempotent=True, unwrap="items")


def queues() -> Call:
    return Call("GET", "/v1/queues", idempotent=True, unwrap="items")


def pause_queue(name: str) -> Call:
    return Call("POST", f"/v1/queues/{quote(name)}/pause", idempotent=True)


def resume_queue(name: str) -> Call:
    return Call("POST", f"/v1/queues/{quote(name)}/resume", idempotent=True)


def dead_letters(queue: str, limit: int | None, cursor: str | None) -> Call:
    return Call("GET", f"/v1/queues/{quote(queue)}/dead", query={"limit": limit, "cursor": cursor}, idempotent=True)


def requeue_dead(queue: str, ids: Sequence[str] | None) -> Call:
    body: dict[str, Any] = {"all": True} if ids is None else {"ids": list(ids)}
    return Call("POST", f"/v1/queues/{quote(queue)}/dead/requeue", body=body, unwrap="requeued")


def purge_dead(queue: str) -> Call:
    return Call("DELETE", f"/v1/queues/{quote(queue)}/dead", idempotent=True, unwrap="purged")


# -- workflows -----------------------------------------------------------------------------------


def submit_workflow(workflow: Mapping[str, Any]) -> Call:
    return Call("POST", "/v1/workflows", body=dict(workflow))


def get_workflow(workflow_id: str) -> Call:
    return Call("GET", f"/v1/workflows/{quote(workflow_id)}", idempotent=True)


def cancel_workflow(workflow_id: str) -> Call:
    return Call("POST", f"/v1/workflows/{quote(workflow_id)}/cancel")


# -- schedules -----------------------------------------------------------------------------------


class ScheduleChanges(TypedDict, total=False):
    """The fields ``PUT /v1/schedules/{id}`` changes; None leaves one as it is."""

    task: str | None
    args: Mapping[str, Any] | None
    cron: str | None
    interval_s: int | None
    timezone: str | None
    enabled: bool | None
    misfire: str | None
    misfire_grace_s: float | None


def schedules() -> Call:
    return Call("GET", "/v1/schedules", idempotent=True, unwrap="items")


def get_schedule(schedule_id: str) -> Call:
    return Call("GET", f"/v1/schedules/{quote(schedule_id)}", idempotent=True)


def create_schedule(schedule: Mapping[str, Any]) -> Call:
    # NOTE: a repeat of a create that went through is a 409 (the id is taken), never a second schedule.
    return Call("POST", "/v1/schedules", body=dict(schedule), idempotent=True)


def update_schedule(schedule_id: str, **changes: Unpack[ScheduleChanges]) -> Call:
    body = {k: v for k, v in changes.items() if v is not None}
    return Call("PUT", f"/v1/schedules/{quote(schedule_id)}", body=body, idempotent=True)


def delete_schedule(schedule_id: str) -> Call:
    return Call("DELETE", f"/v1/schedules/{quote(schedule_id)}", idempotent=True)


def trigger_schedule(schedule_id: str) -> Call:
    return Call("POST", f"/v1/schedules/{quote(schedule_id)}/trigger")


# -- configuration -------------------------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8000"


def default_url(env: Mapping[str, str]) -> str:
    """``JOBRELAY_URL``, else the API that ``API_BIND`` describes (a wildcard host read as loopback)."""
    if env.get("JOBRELAY_URL"):
        return env["JOBRELAY_URL"]
    bind = env.get("API_BIND", "").strip()
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        return DEFAULT_URL
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"

"""``/openapi.json``: the OpenAPI 3.1 document of API.md, for the tasks registered right now.

``OPERATIONS`` is the one list of what the API serves: per method and path
the scope it needs, its parameters, its body and every status it can answer.
The tests hold it against the routes ``create_app`` registers and the scopes
the resources declare; the bodies' schemas are in ``services/api/openapi.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import falcon

from services.api.openapi import (
    DATE_TIME,
    ID,
    MAX_IDEMPOTENCY_KEY,
    QUEUE,
    STRING,
    Schema,
    closed,
    component_schemas,
    ref,
)
from services.api.problems import PROBLEM
from services.api.resources.jobs import MAX_LIMIT
from shared.catalog import TaskSpec
from shared.job import JobStatus
from shared.schedules.definition import SCHEDULE_ID
from shared.store.tasks import TaskRegistry

JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    """One method on one path: who may call it, what it takes and every status it can answer."""

    op_id: str
    path: str
    method: str
    summary: str
    scope: str | None  # None: public, no token
    responses: Mapping[int, str | Schema]  # a component name (schema or response), or a JSON body schema
    body: str | None = None
    params: tuple[Schema, ...] = ()
    location: bool = False  # the success answer carries Location
    links: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)  # name: (operationId, param, from)


def _query(name: str, schema: Schema, description: str | None = None) -> Schema:
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**param, "description": description} if description else param


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


JOB_ID, WORKFLOW_ID = _path("job_id", ID), _path("workflow_id", ID)
QUEUE_NAME, SCHEDULE_ID_PARAM = (
    _path("name", QUEUE),
    _path("schedule_id", {"type": "string", "pattern": SCHEDULE_ID.pattern}),
)
LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50})
CURSOR = _query(
    "cursor", STRING, "The next_cursor of the page before (empty: the first page); opaque, any other value is a 422."
)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The idempotency key, when the body has none.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
}
LIST_FILTERS = (
    _query("status", {"type": "string", "enum": [s.value for s in JobStatus]}),
    *(_query(name, STRING) for name in ("task", "queue", "workflow_id", "schedule_id")),
    _query("created_after", DATE_TIME, "Jobs created after this instant."),
    LIMIT,
    CURSOR,
)
BODY_ERRORS = {400: "BadRequest", 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "Unprocessable"}
_READY = closed({"status": {"const": "ready"}, "checks": closed({"store": {"const": "ok"}, "redis": {"const": "ok"}},
                 ["store", "redis"])}, ["status", "checks"])  # fmt: skip
_HEALTHY = closed({"status": {"const": "ok"}}, ["status"])
_METRICS = {"description": "Prometheus text exposition.", "content": {"text/plain": {"schema": STRING}}}
_EVENTS = {
    "description": "Server-sent events (text/event-stream): `event: job` with `id: <updated_at ms>-<job id>` and the "
    "job as GET /v1/jobs/{id} shows it as `data`, one per change of state, attempt or progress; comment lines keep a "
    "quiet stream alive. It ends after EVENTS_MAX_DURATION_S (a job's stream also once the job is final); "
    "reconnect with Last-Event-ID to go on from there.",
    # NOTE: the schema of one event, as schemathesis checks each event of a stream against it.
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["id", "event", "data"],
                "properties": {
                    "id": STRING,
                    "event": {"type": "string", "enum": ["job"]},
                    "data": {"type": "string", "contentMediaType": JSON, "contentSchema": ref("Job")},
                },
            }
        }
    },
}
_UNAVAILABLE = {
    "description": "The API process serves its limit of event streams (EVENTS_MAX_STREAMS), or the store did not "
    "answer; try again after Retry-After.",
    "content": {PROBLEM: {"schema": ref("Problem")}},
    "headers": {"Retry-After": {"schema": STRING, "required": True}},
}
LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The id of the last event received: the stream goes on after it (a value that is not an id "
    "this API wrote starts the stream from now).",
    "schema": {"type": "string"},
}
_RESULT = {"description": "The result as stored.", "content": {JSON: {"schema": {}}, "*/*": {"schema": {}}}}
_JOB_LINKS = {name: (op, "job_id", "$response.body#/id") for name, op in
              (("GetJob", "getJob"), ("CancelJob", "cancelJob"), ("RetryJob", "retryJob"))}  # fmt: skip
_SCHEDULE_LINKS = {name: (op, "schedule_id", "$response.body#/id") for name, op in
                   (("GetSchedule", "getSchedule"), ("ChangeSchedule", "changeSchedule"),
                    ("DeleteSchedule", "deleteSchedule"))}  # fmt: skip

OPERATIONS: tuple[Operation, ...] = (
    Operation("health", "/healthz", "get", "The process runs", None, {200: _HEALTHY}),
    Operation("ready", "/readyz", "get", "The job store and Redis answer", None, {200: _READY, 503: "NotReady"}),
    Operation("metrics", "/metrics", "get", "Prometheus metrics", None, {200: _METRICS}),
    Operation("openapi", "/openapi.json", "get", "This document", None, {200: {"type": "object"}}),
    Operation("submitJob", "/v1/jobs", "post", "Submit a job", "write", {202: "Job", 200: "Job", 409: "Conflict",
              429: "TooManyRequests", **BODY_ERRORS}, body="JobRequest", params=(IDEMPOTENCY_KEY,), location=True,
              links=_JOB_LINKS),
    Operation("listJobs", "/v1/jobs", "get", "List jobs, newest first", "read", {200: "JobPage", 422: "Unprocessable"},
              params=LIST_FILTERS),
    Operation("submitJobs", "/v1/jobs/batch", "post", "Submit 1 to 1000 jobs, all or nothing", "write",
              {202: "JobBatch", 409: "Conflict", 429: "TooManyRequests", **BODY_ERRORS}, body="JobBatchRequest",
              links={"GetFirstJob": ("getJob", "job_id", "$response.body#/jobs/0/id")}),
    Operation("getJob", "/v1/jobs/{job_id}", "get", "Read a job", "read", {200: "Job", 404: "NotFound"},
              params=(JOB_ID,)),
    Operation("getJobAttempts", "/v1/jobs/{job_id}/attempts", "get", "The job's ended attempts, first first", "read",
              {200: "AttemptList", 404: "NotFound"}, params=(JOB_ID,)),
    Operation("getJobResult", "/v1/jobs/{job_id}/result", "get", "The result with its content type; 404 until then",
              "read", {200: _RESULT, 404: "NotFound"}, params=(JOB_ID,)),
    Operation("streamJobEvents", "/v1/jobs/{job_id}/events", "get",
              "The job's changes as server-sent events, until it is final", "read",
              {200: _EVENTS, 404: "NotFound", 422: "Unprocessable", 503: _UNAVAILABLE},
              params=(JOB_ID, LAST_EVENT_ID)),
    Operation("streamEvents", "/v1/events", "get", "Changes of the jobs of a queue (or all) as server-sent events",
              "read", {200: _EVENTS, 422: "Unprocessable", 503: _UNAVAILABLE},
              params=(_query("queue", QUEUE, "Only this queue's jobs."), LAST_EVENT_ID)),
    Operation("cancelJob", "/v1/jobs/{job_id}/cancel", "post", "Cancel a job", "write",
              {202: "Job", 404: "NotFound", 409: "Conflict"}, params=(JOB_ID,)),
    Operation("retryJob", "/v1/jobs/{job_id}/retry", "post", "Run a failed, cancelled or expired job again", "write",
              {202: "Job", 404: "NotFound", 409: "Conflict"}, params=(JOB_ID,)),
    Operation("listTasks", "/v1/tasks", "get", "The registered task catalog", "read", {200: "TaskList"}),
    Operation("createWorkflow", "/v1/workflows", "post", "Create a chain, group or chord", "write",
              {202: "Workflow", **BODY_ERRORS}, body="WorkflowRequest", location=True,
              links={"GetWorkflow": ("getWorkflow", "workflow_id", "$response.body#/id"),
                     "CancelWorkflow": ("cancelWorkflow", "workflow_id", "$response.body#/id"),
                     "GetFirstStep": ("getJob", "job_id", "$response.body#/jobs/0")}),
    Operation("getWorkflow", "/v1/workflows/{workflow_id}", "get", "Read a workflow", "read",
              {200: "Workflow", 404: "NotFound"}, params=(WORKFLOW_ID,)),
    Operation("cancelWorkflow", "/v1/workflows/{workflow_id}/cancel", "post", "Cancel a workflow", "write",
              {202: "Workflow", 404: "NotFound", 409: "Conflict"}, params=(WORKFLOW_ID,)),
    Operation("listQueues", "/v1/queues", "get", "Queue depths", "read", {200: "QueueList"}),
    Operation("pauseQueue", "/v1/queues/{name}/pause", "post",
              "Pause a queue: its jobs are accepted and stored, no worker starts them (idempotent)", "admin",
              {200: "QueuePause", 404: "NotFound"}, params=(QUEUE_NAME,)),
    Operation("resumeQueue", "/v1/queues/{name}/resume", "post", "Resume a paused queue (idempotent)", "admin",
              {200: "QueuePause", 404: "NotFound"}, params=(QUEUE_NAME,)),
    Operation("listDeadLetters", "/v1/queues/{name}/dead", "get", "The dead-lettered jobs of a queue", "read",
              {200: "JobPage", 404: "NotFound", 422: "Unprocessable"}, params=(QUEUE_NAME, LIMIT, CURSOR)),
    Operation("purgeDeadLetters", "/v1/queues/{name}/dead", "delete", "Purge the dead letters of a queue", "admin",
              {200: "Purged", 404: "NotFound"}, params=(QUEUE_NAME,)),
    Operation("requeueDeadLetters", "/v1/queues/{name}/dead/requeue", "post", "Requeue dead letters", "admin",
              {202: "Requeued", 404: "NotFound", **BODY_ERRORS}, body="RequeueRequest", params=(QUEUE_NAME,)),
    Operation("listSchedules", "/v1/schedules", "get", "List schedules", "read",
              {200: "ScheduleList", 422: "Unprocessable"}),
    Operation("createSchedule", "/v1/schedules", "post", "Create a schedule", "admin",
              {201: "Schedule", 409: "Conflict", **BODY_ERRORS}, body="NewSchedule", location=True,
              links=_SCHEDULE_LINKS),
    Operation("getSchedule", "/v1/schedules/{schedule_id}", "get", "Read a schedule", "read",
              {200: "Schedule", 404: "NotFound"}, params=(SCHEDULE_ID_PARAM,)),
    Operation("changeSchedule", "/v1/schedules/{schedule_id}", "put",
              "Change a schedule (one from the schedules file: only enable or disable it)", "admin",
              {200: "Schedule", 404: "NotFound", 409: "Conflict", **BODY_ERRORS}, body="ScheduleChange",
              params=(SCHEDULE_ID_PARAM,)),
    Operation("deleteSchedule", "/v1/schedules/{schedule_id}", "delete", "Delete a schedule made over the API",
              "admin", {204: {"description": "Deleted."}, 404: "NotFound", 409: "Conflict"},
              params=(SCHEDULE_ID_PARAM,)),
    Operation("triggerSchedule", "/v1/schedules/{schedule_id}/trigger", "post",
              "Run the schedule's task once now, outside its timing", "admin",
              {202: "Job", 404: "NotFound", 409: "Conflict", 422: "Unprocessable"}, params=(SCHEDULE_ID_PARAM,),
              location=True, links=_JOB_LINKS),
)  # fmt: skip


def _problem(description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {PROBLEM: {"schema": ref("Problem")}}, **extra}


RESPONSES: dict[str, Schema] = {
    "BadRequest": _problem(
        "The request is malformed: its body is not JSON (or not UTF-8, empty, or nested too deep), "
        "or a header or transfer coding cannot be read."
    ),
    "Unauthorized": _problem(
        "No token, or an unknown one.", headers={"WWW-Authenticate": {"schema": STRING, "required": True}}
    ),
    "Forbidden": _problem("The token lacks the scope this operation needs."),
    "NotFound": _problem("No such resource."),
    "Conflict": _problem("The resource's state does not allow this, or the id or idempotency key is taken."),
    "TooManyRequests": _problem(
        "Over the namespace's quota (NAMESPACE_QUOTAS).", headers={"Retry-After": {"schema": STRING, "required": True}}
    ),
    "PayloadTooLarge": _problem("The body is over the limit (API_MAX_BODY_BYTES, default 1 MiB)."),
    "UnsupportedMediaType": _problem("The body is not sent as JSON."),
    "Unprocessable": _problem("Valid JSON that fails validation; `errors` has one entry per problem."),
    "NotReady": {
        "description": "A dependency did not answer; `checks` says which.",
        "content": {PROBLEM: {"schema": {"allOf": [ref("Problem")], "required": ["checks"], "properties": {
            "checks": {"type": "object", "additionalProperties": STRING}}}}},
    },
}  # fmt: skip
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted"}


def _response(code: int, spec: str | Schema, op: Operation) -> Schema:
    if isinstance(spec, str) and spec in RESPONSES:
        return {"$ref": f"#/components/responses/{spec}"}
    if isinstance(spec, dict) and "description" in spec:
        return dict(spec)
    response: Schema = {
        "description": _STATUS_TEXT[code],
        "content": {JSON: {"schema": ref(spec) if isinstance(spec, str) else spec}},
    }
    if op.location:
        response["headers"] = {"Location": {"schema": STRING, "required": True, "description": "The new resource."}}
    if op.links:
        response["links"] = {name: {"operationId": target, "parameters": {param: source}}
                             for name, (target, param, source) in op.links.items()}  # fmt: skip
    return response


def operation_object(op: Operation) -> Schema:
    responses = {str(code): _response(code, spec, op) for code, spec in op.responses.items()}
    # Any request can be malformed on the wire (a header or transfer coding the server cannot read).
    responses.setdefault("400", _response(400, "BadRequest", op))
    if op.scope is not None:
        responses.update({"401": _response(401, "Unauthorized", op), "403": _response(403, "Forbidden", op)})
    out: Schema = {
        "operationId": op.op_id,
        "summary": op.summary,
        "tags": [op.path.split("/")[2] if op.path.startswith("/v1/") else "service"],
        # NOTE: OpenAPI 3.1 lets a non-OAuth requirement name roles: here the scope the key needs.
        "security": [] if op.scope is None else [{"bearer": [op.scope]}],
        "responses": dict(sorted(responses.items())),
    }
    if op.scope is not None:
        out["description"] = f"Needs a key with the `{op.scope}` scope (`admin` implies `read` and `write`)."
    if op.params:
        out["parameters"] = list(op.params)
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(op.body)}}}
    return out


def build_document(specs: Mapping[str, TaskSpec]) -> Schema:
    """The whole document, for the tasks registered now."""
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = operation_object(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobrelay",
            "version": "1",
            "description": "Reliable background jobs over HTTP. Errors are RFC 9457 application/problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(specs),
            "responses": RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A key of API_KEYS."}},
        },
    }


class OpenApiResource:
    """Public, like the other service endpoints; rebuilt only when the registered catalog changes.

    The registry caches the catalog for a few seconds, so a request costs one
    fingerprint of the specs unless a worker registered new tasks meanwhile.
    """

    public = True

    def __init__(self, registry: TaskRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        self._body = b""

    def document(self) -> bytes:
        specs = self.registry.all()
        fingerprint = json.dumps([spec.as_dict() for spec in specs.values()], sort_keys=True, default=str)
        with self._lock:
            if fingerprint != self._fingerprint:
                self._body = json.dumps(build_document(specs), separators=(",", ":")).encode()
                self._fingerprint = fingerprint
            return self._body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self.document()
        resp.content_type = falcon.MEDIA_JSON

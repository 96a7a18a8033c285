"""The JSON Schemas of the OpenAPI document: request and response bodies, built from the code that checks them.

Ranges and limits are the validators' own constants, enums the domain
types'. A job request is a ``oneOf`` over the registered tasks, each variant
fixing ``task`` with ``const`` and ``args`` to that task's ``args_schema``,
so a request valid against the document is one the API accepts. The
operations that use these schemas are in ``services/api/resources/openapi.py``.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import fields

from services.api.job_schemas import delivery_schema, job_schema
from services.api.resources.jobs import MAX_BATCH
from services.api.resources.queues import MAX_REQUEUE_IDS
from services.api.schema_parts import (
    BOOLEAN,
    COUNT,
    DATE_TIME,
    ID,
    NULL,
    NUMBER,
    PRIORITY,
    QUEUE,
    STRING,
    Schema,
    closed,
    nullable,
    ref,
)
from shared.broker.queues import QueueStats
from shared.catalog import ISOLATIONS, TaskSpec
from shared.schedules.definition import BUILTIN_PREFIX, MAX_GRACE_S, READ_ONLY_FIELDS, SCHEDULE_ID
from shared.schedules.triggers import MAX_INTERVAL_S
from shared.store.schedules import Misfire, ScheduleSource
from shared.store.workflows import WORKFLOW_TYPES, WorkflowStatus
from shared.submission.callback_urls import CALLBACK_URL_PATTERN, MAX_URL_LENGTH
from shared.submission.validation import MAX_DELAY_S, MAX_RETRIES, MAX_TIME_LIMIT_S

#: Mirrors ``validation.build_job``: the smallest time or age limit it takes, the longest idempotency key.
MIN_LIMIT_S = 0.001
MAX_IDEMPOTENCY_KEY = 200
#: The argument a chain step or chord callback gets from its predecessors, so it may be left out there.
INPUT_ARG = "input"
#: What the scheduler reads as a cron expression: 5 crontab(5) fields or a macro such as ``@daily``.
CRON_FORMAT = "cron"


#: The options a job request may carry next to ``task`` and ``args``, with the validator's ranges
#: (each task's variant narrows ``queue`` to the queues of the registered tasks).
JOB_OPTIONS: dict[str, Schema] = {
    "queue": nullable({**QUEUE, "description": "Overrides the task's queue."}),
    "delay_s": nullable({"type": "number", "minimum": 0, "maximum": MAX_DELAY_S}),
    "eta": nullable(
        {
            **DATE_TIME,
            "description": f"RFC 3339 with an offset, at most {MAX_DELAY_S / 86400:g} days ahead; "
            "not together with delay_s > 0.",
        }
    ),
    "priority": nullable({**PRIORITY, "description": "Absent or null: the task's default priority."}),
    "max_retries": nullable({"type": "integer", "minimum": 0, "maximum": MAX_RETRIES}),
    "time_limit_s": nullable({"type": "number", "minimum": MIN_LIMIT_S, "maximum": MAX_TIME_LIMIT_S}),
    "max_age_s": nullable({"type": "number", "minimum": MIN_LIMIT_S, "maximum": MAX_DELAY_S}),
    "idempotency_key": nullable({"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}),
    "unique_for_s": nullable(
        {
            "type": "number",
            "minimum": MIN_LIMIT_S,
            "maximum": MAX_DELAY_S,
            "description": "While a job of the task with the same uniqueness key waits or runs (for at most "
            "this long), the submission returns it (200, Jobrelay-Deduplicated: unique). Overrides the task's.",
        }
    ),
    "debounce_s": nullable(
        {
            "type": "number",
            "minimum": MIN_LIMIT_S,
            "maximum": MAX_DELAY_S,
            "description": "The job waits this long; a later submission with the same uniqueness key "
            "cancels it while it waits and takes its place. Not together with unique_for_s.",
        }
    ),
    "unique_key": nullable(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "description": "The uniqueness key; absent: the canonical JSON of args.",
        }
    ),
    "callback_url": nullable(
        {
            "type": "string",
            "maxLength": MAX_URL_LENGTH,
            "pattern": CALLBACK_URL_PATTERN,
            "description": "POSTed the job's final state, signed (X-Jobrelay-Signature), once it ends. A host "
            "on a loopback, private, link-local or reserved address is refused (422) unless "
            "CALLBACK_ALLOW_PRIVATE=on.",
        }
    ),
}
CALLBACK_URL = JOB_OPTIONS["callback_url"]
#: An eta and a positive delay together are refused.
_ETA_AND_DELAY = {
    "required": ["eta", "delay_s"],
    "properties": {"eta": STRING, "delay_s": {"type": "number", "exclusiveMinimum": 0}},
}
#: So are unique_for_s and debounce_s together.
_UNIQUE_AND_DEBOUNCE = {
    "required": ["unique_for_s", "debounce_s"],
    "properties": {"unique_for_s": {"type": "number"}, "debounce_s": {"type": "number"}},
}


def _args(spec: TaskSpec, *, held: bool = False) -> tuple[Schema, bool]:
    """The task's args schema (``input`` optional when ``held``) and whether ``args`` must be given."""
    args = dict(spec.args_schema)
    required = [name for name in args.get("required", []) if not (held and name == INPUT_ARG)]
    if "required" in args:
        args["required"] = required
    return args, bool(required)


def queue_option(queues: Iterable[str]) -> Schema:
    """The queue override: one of the registered tasks' queues, as no worker serves any other."""
    return {
        "type": ["string", "null"],
        "enum": [*sorted(queues), None],
        "description": "Overrides the task's queue: one of the registered tasks' queues.",
    }


def job_request_variant(
    spec: TaskSpec, *, step: bool = False, held: bool = False, queues: Iterable[str] = ()
) -> Schema:
    """The request for one task; a workflow step takes no idempotency key, a held step may omit ``input``."""
    args, args_required = _args(spec, held=held)
    options = {**JOB_OPTIONS, "queue": queue_option({spec.queue, *queues})}
    if step:
        options.update(idempotency_key=NULL, unique_for_s=NULL, debounce_s=NULL, unique_key=NULL)
    return closed(
        {"task": {"type": "string", "const": spec.name}, "args": args, **options},
        ["task", "args"] if args_required else ["task"],
        description=spec.description or None,
        **{"not": {"anyOf": [_ETA_AND_DELAY, _UNIQUE_AND_DEBOUNCE]}},
    )


def _one_of(variants: list[Schema]) -> Schema:
    # NOTE: oneOf must not be empty; with no task registered no request is valid.
    return {"oneOf": variants} if variants else {"not": {}, "description": "No task is registered."}


def job_request_schemas(specs: Mapping[str, TaskSpec]) -> dict[str, Schema]:
    """``JobRequest``, ``WorkflowStep`` and ``HeldWorkflowStep``, each a oneOf over the registered tasks."""
    out: dict[str, Schema] = {}
    kinds = {"JobRequest": {}, "WorkflowStep": {"step": True}, "HeldWorkflowStep": {"step": True, "held": True}}
    queues = {spec.queue for spec in specs.values()}
    for kind, flags in kinds.items():
        for name, spec in sorted(specs.items()):
            out[f"{kind}.{name}"] = job_request_variant(spec, **flags, queues=queues)
        out[kind] = _one_of([ref(f"{kind}.{name}") for name in sorted(specs)])
    return out


def _workflow_schemas() -> dict[str, Schema]:
    steps = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH}
    chain = {**steps, "prefixItems": [ref("WorkflowStep")], "items": ref("HeldWorkflowStep")}
    request = {
        "oneOf": [
            closed({"type": {"const": "chain"}, "steps": chain, "callback": NULL, "callback_url": CALLBACK_URL},
                   ["type", "steps"]),
            closed({"type": {"const": "group"}, "steps": {**steps, "items": ref("WorkflowStep")}, "callback": NULL,
                    "callback_url": CALLBACK_URL}, ["type", "steps"]),
            closed({"type": {"const": "chord"}, "steps": {**steps, "items": ref("WorkflowStep")},
                    "callback": ref("HeldWorkflowStep"), "callback_url": CALLBACK_URL},
                   ["type", "steps", "callback"]),
        ]
    }  # fmt: skip
    statuses = [WorkflowStatus.RUNNING, WorkflowStatus.SUCCEEDED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED]
    workflow: dict[str, Schema] = {
        "id": ID,
        "type": {"type": "string", "enum": list(WORKFLOW_TYPES)},
        "status": {"type": "string", "enum": statuses},
        "jobs": {"type": "array", "items": ID, "description": "Job ids in step order."},
        "callback_job": nullable(ID),
        "created_at": DATE_TIME,
        "finished_at": nullable(DATE_TIME),
        "namespace": nullable({"type": "string", "description": "The submitting key's namespace (tenant)."}),
        "callback_url": nullable(STRING),
    }
    required = list(workflow)
    workflow["callback_delivery"] = nullable(ref("CallbackDelivery"))
    return {"WorkflowRequest": request, "Workflow": closed(workflow, required)}


def _zone_constant(name: str) -> str:
    """``Etc/GMT+1`` -> ``ETC_GMT_PLUS_1``, ``America/Port-au-Prince`` -> ``AMERICA_PORT_AU_PRINCE``."""
    signed = re.sub(r"-(?=\d)", "_MINUS_", re.sub(r"\+(?=\d)", "_PLUS_", name))
    return re.sub(r"[^A-Za-z0-9]+", "_", signed).strip("_").upper()


def _schedule_schemas(specs: Mapping[str, TaskSpec]) -> dict[str, Schema]:
    """A new schedule (POST) names its id; a change (PUT) sends only what changes, task and args together."""
    cron = {"type": "string", "maxLength": 200, "format": CRON_FORMAT, "description": "e.g. '0 2 * * *', '@daily'."}
    interval = {"type": "integer", "minimum": 1, "maximum": MAX_INTERVAL_S}
    # NOTE: the names the scheduler's zone() accepts.
    names = sorted(zoneinfo.available_timezones() | {"UTC"})
    # NOTE: generators derive constant names from values, and Etc/GMT+1 and Etc/GMT-1 would both be
    # ETC_GMT_1 (openapi-python-client stops on it); x-enum-varnames gives each its own.
    zones = {"type": "string", "enum": names, "default": "UTC", "x-enum-varnames": [_zone_constant(n) for n in names]}
    definition: dict[str, Schema] = {
        "timezone": ref("TimeZone"),
        "enabled": {"type": "boolean", "default": True},
        "misfire": {"type": "string", "enum": [m.value for m in Misfire], "default": Misfire.COALESCE.value},
        "misfire_grace_s": {"type": "number", "minimum": 1, "maximum": MAX_GRACE_S, "default": 60},
        **{name: {"description": "Read-only; ignored when sent back."} for name in sorted(READ_ONLY_FIELDS)},
    }
    schedule_id = {
        "type": "string",
        "pattern": SCHEDULE_ID.pattern,
        "not": {"pattern": f"^{re.escape(BUILTIN_PREFIX)}"},
    }
    timing = [
        {"required": ["cron"], "properties": {"cron": cron, "interval_s": NULL}},
        {"required": ["interval_s"], "properties": {"interval_s": interval, "cron": NULL}},
    ]
    no_timing = {"not": {"anyOf": [{"required": ["cron"]}, {"required": ["interval_s"]}]}}
    out: dict[str, Schema] = {"TimeZone": zones}
    for name, spec in sorted(specs.items()):
        args, args_required = _args(spec)
        props = {"task": {"type": "string", "const": name}, "args": args, "cron": {}, "interval_s": {}, **definition}
        out[f"NewSchedule.{name}"] = closed(
            {"id": schedule_id, **props}, ["id", "task", *(["args"] if args_required else [])]
        )
        out[f"ScheduleChange.{name}"] = closed(props, ["task", "args"])
    no_task = closed({"cron": {}, "interval_s": {}, **definition}, description="Timing or policy only.")
    out["NewSchedule"] = {"allOf": [_one_of([ref(f"NewSchedule.{n}") for n in sorted(specs)]), {"oneOf": timing}]}
    out["ScheduleChange"] = {
        "allOf": [{"oneOf": [no_task, *(ref(f"ScheduleChange.{n}") for n in sorted(specs))]},
                  {"oneOf": [*timing, no_timing]}],
        "description": "Fields left out keep their value; task and args go together; giving cron or interval_s "
                       "replaces the timing.",
    }  # fmt: skip
    schedule = {
        "id": STRING,
        "task": STRING,
        "args": {"type": "object"},
        "cron": nullable(STRING),
        "interval_s": nullable(interval),
        "timezone": STRING,
        "enabled": BOOLEAN,
        "misfire": definition["misfire"],
        "misfire_grace_s": NUMBER,
        "next_run_at": nullable(DATE_TIME),
        "last_run_at": nullable(DATE_TIME),
        "source": {"type": "string", "enum": [s.value for s in ScheduleSource]},
        "namespace": nullable({"type": "string", "description": "The creating key's namespace (tenant)."}),
    }
    out["Schedule"] = closed(schedule, schedule)
    out["ScheduleList"] = closed({"items": {"type": "array", "items": ref("Schedule")}}, ["items"])
    return out


#: A job's (or an attempt's) error; ``traceback`` for admin keys only.
_ERROR = {
    "type": "object",
    "properties": {"type": STRING, "message": STRING, "retryable": BOOLEAN},
    "required": ["type", "message"],
}


def _attempt_schema() -> Schema:
    props: dict[str, Schema] = {
        "attempt": {"type": "integer", "minimum": 1},
        "worker": nullable({**STRING, "description": "The worker process that ran it."}),
        "started_at": nullable(DATE_TIME),
        "finished_at": DATE_TIME,
        "duration_s": nullable(NUMBER),
        "outcome": {"type": "string", "enum": ["succeeded", "retrying", "failed", "cancelled"]},
        "error": nullable(_ERROR),
        "next_attempt_at": nullable({**DATE_TIME, "description": "When a retried attempt's backoff ends."}),
        "backoff_s": nullable({**NUMBER, "description": "From this attempt's end to the next one's start."}),
    }
    return closed(props, props)


def _problem_schema() -> Schema:
    error = closed({"path": STRING, "message": STRING}, ["path", "message"])
    props = {
        "type": {"type": "string", "format": "uri"},
        "title": STRING,
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": STRING,
        "errors": {"type": "array", "items": error, "description": "One entry per problem, at a JSON pointer."},
    }
    return {"type": "object", "properties": props, "required": ["type", "title", "status", "detail"]}


def _queue_schemas() -> dict[str, Schema]:
    kinds: dict[str, Schema] = {
        "int": COUNT,
        "float": {"type": "number", "minimum": 0},
        "str": QUEUE,
        "bool": {"type": "boolean", "description": "No worker starts the queue's jobs while it is paused."},
    }
    stats = {f.name: kinds[str(f.type)] for f in fields(QueueStats)}
    ids = {"type": "array", "items": {"type": "string", "maxLength": 36}, "minItems": 1, "maxItems": MAX_REQUEUE_IDS}
    return {
        "QueueStats": closed(stats, stats),
        "QueueList": closed({"items": {"type": "array", "items": ref("QueueStats")}}, ["items"]),
        "RequeueRequest": {
            "oneOf": [closed({"ids": ids}, ["ids"]), closed({"all": {"type": "boolean", "const": True}}, ["all"])]
        },
        "Requeued": closed({"requeued": COUNT}, ["requeued"]),
        "Purged": closed({"purged": COUNT}, ["purged"]),
        "QueuePause": closed(
            {"name": QUEUE, "paused": {"type": "boolean"}, "paused_at": nullable(DATE_TIME)},
            ["name", "paused", "paused_at"],
        ),
    }


def component_schemas(specs: Mapping[str, TaskSpec]) -> dict[str, Schema]:
    """Every schema of the document, for the tasks registered now."""
    task: dict[str, Schema] = {
        "name": STRING,
        "queue": QUEUE,
        "args_schema": {"type": "object", "description": "JSON Schema (2020-12) of the task's args."},
        "max_retries": COUNT,
        "time_limit_s": nullable(NUMBER),
        "max_age_s": nullable(NUMBER),
        "priority": {"type": "integer"},
        "description": STRING,
        "concurrency": nullable({"type": "integer", "minimum": 1, "description": "Most jobs running at once."}),
        "concurrency_key": nullable({"type": "string", "description": "Argument path: the limit is per value."}),
        "rate_limit": nullable({"type": "string", "description": "Most starts per period, like '100/m'."}),
        "rate_limit_key": nullable({"type": "string", "description": "Argument path: the rate is per value."}),
        "cancel_grace_s": {**NUMBER, "description": "Seconds a cancelled job may run on before its process is killed."},
        "unique_for_s": nullable({"type": "number", "description": "A job with the same args is returned, not added."}),
        "debounce_s": nullable({"type": "number", "description": "Of a burst of submissions only the last runs."}),
        "isolation": {"type": "string", "enum": list(ISOLATIONS)},
    }
    jobs = {"type": "array", "items": ref("Job")}
    return {
        "Problem": _problem_schema(),
        "Job": job_schema(),
        "CallbackDelivery": delivery_schema(),
        "AttemptList": closed({"items": {"type": "array", "items": _attempt_schema()}}, ["items"]),
        "JobPage": closed({"items": jobs, "next_cursor": nullable(STRING)}, ["items", "next_cursor"]),
        "JobBatchRequest": closed(
            {"jobs": {"type": "array", "items": ref("JobRequest"), "minItems": 1, "maxItems": MAX_BATCH}}, ["jobs"]
        ),
        "JobBatch": closed({"jobs": jobs}, ["jobs"]),
        **job_request_schemas(specs),
        "Task": closed(task, task),
        "TaskList": closed({"items": {"type": "array", "items": ref("Task")}}, ["items"]),
        **_workflow_schemas(),
        **_queue_schemas(),
        **_schedule_schemas(specs),
    }

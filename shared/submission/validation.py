"""Turning a job request body, or a schedule's tick, into a ``Job``, or into what is wrong with it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from shared import tracing
from shared.catalog import QUEUE_NAME, TaskSpec
from shared.errors import FieldError, InvalidInput
from shared.ids import new_id
from shared.job import Job, JobStatus, utcnow
from shared.store.tasks import TaskRegistry
from shared.store.uniqueness import unique_hash
from shared.submission.callback_urls import callback_url_error

MAX_DELAY_S = 365 * 86400.0
MAX_TIME_LIMIT_S = 7 * 86400.0
MAX_RETRIES = 100
PRIORITY_RANGE = (0, 9)
JOB_FIELDS = {
    "task",
    "args",
    "queue",
    "delay_s",
    "eta",
    "priority",
    "max_retries",
    "time_limit_s",
    "max_age_s",
    "idempotency_key",
    "unique_for_s",
    "debounce_s",
    "unique_key",
    "callback_url",
}


@dataclass(frozen=True)
class Submission:
    """Context of one request that every job it creates shares."""

    request_id: str | None = None
    idempotency_key: str | None = None
    workflow_id: str | None = None
    schedule_id: str | None = None
    #: Tenants: the submitting API key's namespace (None: none) and name.
    namespace: str | None = None
    submitted_by: str | None = None
    #: ``CALLBACK_ALLOW_PRIVATE``: a ``callback_url`` may point inside the network (``callback_urls.py``).
    allow_private_callbacks: bool = False


@lru_cache(maxsize=512)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


#: The validator of each schema object the registry handed out, by ``id`` (the schema is kept
#: alongside, so its id is not reused): encoding the schema as a cache key costs more than a lookup.
_by_schema: dict[int, tuple[object, Draft202012Validator]] = {}


def _schema_validator(schema: Any) -> Draft202012Validator:
    hit = _by_schema.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    validator = _validator(json.dumps(schema, sort_keys=True))
    if len(_by_schema) >= 512:
        _by_schema.clear()
    _by_schema[id(schema)] = (schema, validator)
    return validator


def args_errors(spec: TaskSpec, args: Any, base: str) -> list[FieldError]:
    """Every way ``args`` fails the task's schema, each at a JSON pointer under ``base``."""
    validator = _schema_validator(spec.args_schema)
    found: list[FieldError] = []
    for error in sorted(validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path))):
        pointer = base + "".join(f"/{_escape(part)}" for part in error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            found.append(FieldError(f"{pointer}/{_escape(missing)}", "is required"))
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - allowed):
                found.append(FieldError(f"{pointer}/{_escape(extra)}", "is not an argument of this task"))
        else:
            found.append(FieldError(pointer or base, error.message))
    return found


def _input_optional(spec: TaskSpec) -> TaskSpec:
    schema = dict(spec.args_schema)
    schema["required"] = [name for name in schema.get("required", []) if name != "input"]
    return dataclasses.replace(spec, args_schema=schema)


def _escape(part: object) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def request_hash(body: dict[str, Any]) -> str:
    """Fingerprint of a request for idempotency: the body without its key, canonically encoded."""
    canonical = {k: v for k, v in body.items() if k != "idempotency_key"}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _number(body: dict[str, Any], name: str, base: str, errors: list[FieldError], lo: float, hi: float) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(FieldError(f"{base}/{name}", "must be a number or null"))
        return None
    if not lo <= value <= hi:
        errors.append(FieldError(f"{base}/{name}", f"must be between {lo:g} and {hi:g}"))
        return None
    return value


def _whole(value: Any) -> Any:
    """JSON has one number type: 3.0 is the integer 3, as JSON Schema's ``integer`` and args validation read it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _parse_eta(value: Any, pointer: str, errors: list[FieldError]) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        errors.append(FieldError(pointer, "must be an RFC 3339 date-time string or null"))
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        errors.append(FieldError(pointer, "is not an RFC 3339 date-time"))
        return None
    if parsed.tzinfo is None:
        errors.append(FieldError(pointer, "needs a time zone offset, such as Z"))
        return None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        errors.append(FieldError(pointer, "is out of range"))
        return None


def build_job(
    body: Any,
    base: str,
    registry: TaskRegistry,
    submission: Submission,
    errors: list[FieldError],
    *,
    held: bool = False,
) -> Job | None:
    """Validate one job request; append each problem to ``errors`` and return the job if none.

    A ``held`` job is a workflow step that waits for its predecessors: its
    ``input`` argument, when the task has one, comes from them, so it is not
    required here.
    """
    before = len(errors)
    if not isinstance(body, dict):
        errors.append(FieldError(base or "/", "must be a JSON object"))
        return None
    for unknown in sorted(set(body) - JOB_FIELDS):
        errors.append(FieldError(f"{base}/{_escape(unknown)}", "is not a field of a job request"))
    task_name = body.get("task")
    spec: TaskSpec | None = None
    if not isinstance(task_name, str) or not task_name:
        errors.append(FieldError(f"{base}/task", "is required and must be a task name"))
    else:
        spec = registry.get(task_name)
        if spec is None:
            errors.append(FieldError(f"{base}/task", f"no worker has registered a task named {task_name!r}"))
        elif held:
            spec = _input_optional(spec)
    args = body.get("args", {})
    if not isinstance(args, dict):
        errors.append(FieldError(f"{base}/args", "must be a JSON object"))
    elif spec is not None:
        errors.extend(args_errors(spec, args, f"{base}/args"))
    queue = body.get("queue")
    if queue is not None and (not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue)):
        errors.append(FieldError(f"{base}/queue", "must be a queue name (lowercase letters, digits, '_', '-')"))
    elif queue is not None and not registry.knows_queue(queue):
        known = ", ".join(registry.queues()) or "none"
        message = f"no worker serves queue {queue!r} (no registered task uses it); the known queues: {known}"
        errors.append(FieldError(f"{base}/queue", message))
    priority = _whole(body.get("priority"))
    if priority is None:
        # Not given (or null): the task's default, from @task(priority=...).
        priority = spec.priority if spec is not None else 0
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not (PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1])
    ):
        errors.append(FieldError(f"{base}/priority", "must be an integer from 0 to 9"))
    max_retries = _whole(body.get("max_retries"))
    if max_retries is not None and (
        isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES
    ):
        errors.append(FieldError(f"{base}/max_retries", f"must be an integer from 0 to {MAX_RETRIES} or null"))
    delay_s = _number(body, "delay_s", base, errors, 0, MAX_DELAY_S)
    time_limit_s = _number(body, "time_limit_s", base, errors, 0.001, MAX_TIME_LIMIT_S)
    max_age_s = _number(body, "max_age_s", base, errors, 0.001, MAX_DELAY_S)
    eta = _parse_eta(body.get("eta"), f"{base}/eta", errors)
    if eta is not None and delay_s:
        errors.append(FieldError(f"{base}/eta", "give either eta or delay_s, not both"))
    elif eta is not None and eta > utcnow() + timedelta(seconds=MAX_DELAY_S):
        errors.append(
            FieldError(f"{base}/eta", f"is more than {MAX_DELAY_S / 86400:g} days ahead (the longest delay_s)")
        )
    header_key = submission.idempotency_key
    if header_key is not None and not 1 <= len(header_key) <= 200:
        errors.append(FieldError("/headers/Idempotency-Key", "must be a string of 1 to 200 characters"))
    elif header_key is not None and "\x00" in header_key:
        errors.append(FieldError("/headers/Idempotency-Key", "must not contain U+0000"))
    key = body.get("idempotency_key", header_key)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200):
        errors.append(FieldError(f"{base}/idempotency_key", "must be a string of 1 to 200 characters"))
    unique = _uniqueness(body, base, spec, submission, errors)
    callback_url = body.get("callback_url")
    if callback_url is not None:
        problem = callback_url_error(
            callback_url, f"{base}/callback_url", allow_private=submission.allow_private_callbacks
        )
        if problem is not None:
            errors.append(problem)
    if len(errors) > before or spec is None:
        return None

    now = utcnow()
    scheduled_for = eta if eta is not None else (now + timedelta(seconds=delay_s) if delay_s else None)
    if scheduled_for is not None and scheduled_for <= now:
        scheduled_for = None
    unique_for_s, debounce_s, unique_key = unique
    if debounce_s:
        # NOTE: a debounced job waits out its burst: a later submission replaces it while it waits.
        scheduled_for = max(scheduled_for or now, now + timedelta(seconds=debounce_s))
    hashed = dict(body)
    if submission.idempotency_key is not None:
        hashed.setdefault("idempotency_key", submission.idempotency_key)
    job = Job(
        id=new_id(),
        task=spec.name,
        queue=queue or spec.queue,
        status=JobStatus.SCHEDULED if scheduled_for or held else JobStatus.QUEUED,
        args=args,
        max_retries=spec.max_retries if max_retries is None else max_retries,
        priority=priority,
        time_limit_s=spec.time_limit_s if time_limit_s is None else float(time_limit_s),
        max_age_s=spec.max_age_s if max_age_s is None else float(max_age_s),
        created_at=now,
        updated_at=now,
        scheduled_for=scheduled_for,
        workflow_id=submission.workflow_id,
        schedule_id=submission.schedule_id,
        idempotency_key=stored_idempotency_key(submission.namespace, key),
        namespace=submission.namespace,
        submitted_by=submission.submitted_by,
        request_hash=request_hash(hashed) if key else None,
        request_id=submission.request_id,
        held=held,
        # NOTE: the request's span: the job's every publish (now, by the relay, as a step released
        # later, as a retry) joins this trace.
        traceparent=tracing.traceparent(),
        callback_url=callback_url,
        push_due=callback_url is not None,
    )
    # NOTE: a unique_key with no window (here or on the task) makes the job unique while it waits or
    # runs, with no time bound (unique_until null), as the document allows it alone.
    if unique_for_s or debounce_s or unique_key is not None:
        job.unique_key = unique_hash(job.task, args, unique_key, submission.namespace)
        job.unique_until = now + timedelta(seconds=unique_for_s) if unique_for_s else None
        job.extra["debounce_s"] = debounce_s
    return job


def stored_idempotency_key(namespace: str | None, key: str | None) -> str | None:
    """The idempotency key as stored: a namespaced key's behind its namespace, so tenants never share one.

    NOTE: U+001F cannot appear in a namespace, so no two namespaces' keys collide.
    """
    return f"{namespace}\x1f{key}" if namespace is not None and key is not None else key


def _uniqueness(
    body: dict[str, Any], base: str, spec: TaskSpec | None, submission: Submission, errors: list[FieldError]
) -> tuple[float | None, float | None, str | None]:
    """(unique_for_s, debounce_s, unique_key) of a request: its own, else its task's; none for a workflow step."""
    unique_for_s = _number(body, "unique_for_s", base, errors, 0.001, MAX_DELAY_S)
    debounce_s = _number(body, "debounce_s", base, errors, 0.001, MAX_DELAY_S)
    unique_key = body.get("unique_key")
    if unique_key is not None and (not isinstance(unique_key, str) or not 1 <= len(unique_key) <= 200):
        errors.append(FieldError(f"{base}/unique_key", "must be a string of 1 to 200 characters"))
    if unique_for_s is not None and debounce_s is not None:
        errors.append(FieldError(f"{base}/debounce_s", "give either unique_for_s or debounce_s, not both"))
    if submission.workflow_id is not None:
        for name in ("unique_for_s", "debounce_s", "unique_key"):
            if body.get(name) is not None:
                errors.append(FieldError(f"{base}/{name}", "workflow steps are not unique jobs"))
        return None, None, None
    if unique_for_s is None and debounce_s is None and spec is not None:
        unique_for_s, debounce_s = spec.unique_for_s, spec.debounce_s
    return unique_for_s, debounce_s, unique_key if isinstance(unique_key, str) else None


def build_scheduled_job(
    registry: TaskRegistry, *, job_id: str, schedule_id: str, task: str, args: Any, namespace: str | None = None
) -> Job:
    """The job of one tick of a schedule: its task's defaults, under the id the scheduler derived from the tick,
    in the schedule's namespace.

    Raises ``InvalidInput`` saying why when the task is not registered or ``args`` no longer fit its
    schema (a worker changed the task since the schedule was written).
    """
    spec = registry.get(task)
    if spec is None:
        raise InvalidInput(f"task {task!r} is not registered by any worker")
    problems = args_errors(spec, args, "/args")
    if problems:
        raise InvalidInput("; ".join(f"{p.path}: {p.message}" for p in problems), problems)
    now = utcnow()
    return Job(
        id=job_id,
        task=spec.name,
        queue=spec.queue,
        status=JobStatus.QUEUED,
        args=args,
        max_retries=spec.max_retries,
        priority=spec.priority,
        time_limit_s=spec.time_limit_s,
        max_age_s=spec.max_age_s,
        created_at=now,
        updated_at=now,
        schedule_id=schedule_id,
        namespace=namespace,
        traceparent=tracing.traceparent(),
    )

"""``/v1/jobs``: submit, read, list and cancel jobs."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import falcon

from services.api.body import read_json
from services.api.middleware import namespace_of, sees_tracebacks, submitted_by, visible
from services.api.quotas import Quotas
from services.api.tenancy import job_view, stored_schedule_id
from shared import metrics
from shared.broker.queues import drop_dead_letters
from shared.errors import Conflict, FieldError, InvalidInput, NotFound
from shared.job import JobStatus
from shared.results import ResultStorage, result_reference
from shared.store.attempts import attempt_views
from shared.store.jobs import JobFilter, JobStore
from shared.store.pushes import delivery_view
from shared.store.uniqueness import DEDUPLICATED
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job
from shared.workflows import WorkflowEngine

log = logging.getLogger(__name__)
MAX_BATCH = 1000
MAX_LIMIT = 500


def parse_limit(req: falcon.Request, errors: list[FieldError], default: int = 50) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return default
    if not isinstance(raw, str) or not raw.isdecimal() or len(raw) > 9 or not 1 <= int(raw) <= MAX_LIMIT:
        errors.append(FieldError("/query/limit", f"must be an integer from 1 to {MAX_LIMIT}"))
        return default
    return int(raw)


class JobsResource:
    scopes = {"GET": "read", "POST": "write"}
    namespaced = True

    def __init__(self, submitter: Submitter, quotas: Quotas | None = None) -> None:
        self.submitter = submitter
        self.quotas = quotas

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.submitter.max_body_bytes)
        submission = Submission(
            request_id=req.context.request_id,
            idempotency_key=req.get_header("Idempotency-Key"),
            namespace=namespace_of(req),
            submitted_by=submitted_by(req),
            allow_private_callbacks=self.submitter.allow_private_callbacks,
        )
        errors: list[FieldError] = []
        job = build_job(body, "", self.submitter.registry, submission, errors)
        if job is None:
            raise InvalidInput("the job request is invalid", errors)
        if self.quotas is not None:
            self.quotas.admit(submission.namespace, 1)
        [(stored, created)] = self.submitter.submit_grouped([job])
        resp.status = falcon.HTTP_202 if created else falcon.HTTP_200
        resp.set_header("Location", f"/v1/jobs/{stored.id}")
        if stored.extra.get(DEDUPLICATED):
            # NOTE: tells a unique job's answer from an idempotent replay's, both 200 with the stored job.
            resp.set_header("Jobrelay-Deduplicated", str(stored.extra[DEDUPLICATED]))
            metrics.jobs_deduplicated_total.labels(stored.task, stored.queue).inc()
        resp.media = job_view(req, stored)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        errors: list[FieldError] = []
        params = req.params
        for name in sorted(set(params) - {"status", "task", "queue", "workflow_id", "schedule_id",
                                          "created_after", "limit", "cursor"}):  # fmt: skip
            errors.append(FieldError(f"/query/{name}", "is not a filter of this list"))
        values = {name: params.get(name) for name in ("task", "queue", "workflow_id", "schedule_id")}
        for name, value in values.items():
            if isinstance(value, list):
                errors.append(FieldError(f"/query/{name}", "give it once"))
            elif value is not None and "\x00" in value:
                errors.append(FieldError(f"/query/{name}", "must not contain U+0000"))
        status = None
        if "status" in params:
            try:
                status = JobStatus(str(params["status"]))
            except ValueError:
                errors.append(FieldError("/query/status", f"must be one of {', '.join(s.value for s in JobStatus)}"))
        created_after = None
        if "created_after" in params:
            try:
                created_after = datetime.fromisoformat(str(params["created_after"]).replace("Z", "+00:00"))
                if created_after.tzinfo is None:
                    created_after = created_after.replace(tzinfo=UTC)
                created_after = created_after.astimezone(UTC)
            except (ValueError, OverflowError):
                errors.append(FieldError("/query/created_after", "must be an RFC 3339 date-time"))
        limit = parse_limit(req, errors)
        # An empty cursor (``cursor=``, which the document allows) is the first page, as no cursor is.
        cursor = params.get("cursor") or None
        if cursor is not None and not isinstance(cursor, str):
            errors.append(FieldError("/query/cursor", "give it once"))
        if errors:
            raise InvalidInput("the list query is invalid", errors)
        if isinstance(values["schedule_id"], str):
            values["schedule_id"] = stored_schedule_id(req, values["schedule_id"])
        filters = JobFilter(
            status=status,
            created_after=created_after,
            namespace=namespace_of(req),
            **values,  # type: ignore[arg-type]
        )
        try:
            page = self.submitter.store.page(filters, limit=limit, cursor=cursor)  # type: ignore[arg-type]
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, [FieldError("/query/cursor", exc.detail)]) from None
        resp.media = {
            "items": [job_view(req, job) for job in page.items],
            "next_cursor": page.next_cursor,
        }


class JobRetryResource:
    scopes = {"POST": "write"}
    namespaced = True

    def __init__(self, submitter: Submitter) -> None:
        self.submitter = submitter

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = visible(req, self.submitter.store.get(job_id))
        requeued = self.submitter.store.requeue([job_id])
        if not requeued:
            raise Conflict(f"job {job_id} is {job.status.value}; only failed, cancelled or expired jobs can be retried")
        if job.dead:
            drop_dead_letters(self.submitter.broker.client, job.queue, [job_id])
        self.submitter.publish(requeued, new=False)
        resp.status = falcon.HTTP_202
        resp.media = job_view(req, requeued[0])


class BatchResource:
    scopes = {"POST": "write"}
    namespaced = True

    def __init__(self, submitter: Submitter, quotas: Quotas | None = None) -> None:
        self.submitter = submitter
        self.quotas = quotas

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.submitter.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
            raise InvalidInput('a batch is {"jobs": [...]}', [FieldError("/jobs", "must be a list of job requests")])
        requests: list[Any] = body["jobs"]
        if not 1 <= len(requests) <= MAX_BATCH:
            raise InvalidInput(
                "batch size out of range", [FieldError("/jobs", f"must hold 1 to {MAX_BATCH} job requests")]
            )
        submission = Submission(
            request_id=req.context.request_id,
            namespace=namespace_of(req),
            submitted_by=submitted_by(req),
            allow_private_callbacks=self.submitter.allow_private_callbacks,
        )
        errors: list[FieldError] = []
        built = [build_job(item, f"/jobs/{i}", self.submitter.registry, submission, errors)
                 for i, item in enumerate(requests)]  # fmt: skip
        if errors:
            raise InvalidInput("the batch is invalid; nothing was accepted", errors)
        if self.quotas is not None:
            self.quotas.admit(submission.namespace, len(built))
        stored = self.submitter.submit([job for job in built if job is not None])
        resp.status = falcon.HTTP_202
        resp.media = {"jobs": [job_view(req, job) for job, _created in stored]}


class JobResource:
    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = visible(req, self.store.get(job_id))
        resp.media = job_view(req, job)
        if job.callback_url is not None:
            resp.media["callback_delivery"] = callback_delivery(self.store, job.push_job_id)


def callback_delivery(store: JobStore, push_job_id: str | None) -> dict[str, Any] | None:
    """How the push of a final state went (its delivery job), or None before one was submitted."""
    if push_job_id is None:
        return None
    try:
        return delivery_view(store.get(push_job_id))
    except NotFound:
        return None  # pruned before the job it announced


class JobAttemptsResource:
    """The job's ended attempts, its timeline: who ran each, when, how it ended, the backoff after."""

    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        visible(req, self.store.get(job_id))
        items = attempt_views(self.store.attempt_history(job_id), traceback=sees_tracebacks(req))
        resp.media = {"items": items}


class JobResultResource:
    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, store: JobStore, results: ResultStorage) -> None:
        self.store = store
        self.results = results

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = visible(req, self.store.get(job_id))
        if job.status != JobStatus.SUCCEEDED:
            raise NotFound(f"job {job_id} has no result yet (it is {job.status.value})")
        if job.result_url is None:
            resp.text = json.dumps(job.result)
            resp.content_type = falcon.MEDIA_JSON
            return
        try:
            resp.data, resp.content_type = self.results.open(result_reference(job.id))
        except FileNotFoundError:
            raise NotFound(f"the result file of job {job_id} is gone (pruned or storage changed)") from None


class JobCancelResource:
    scopes = {"POST": "write"}
    namespaced = True

    def __init__(self, store: JobStore, workflows: WorkflowEngine) -> None:
        self.store = store
        self.workflows = workflows

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        visible(req, self.store.get(job_id))
        job = self.store.cancel(job_id)
        if job.workflow_id and job.status.is_final:
            self.workflows.advance(job.workflow_id)
        resp.status = falcon.HTTP_202
        resp.media = job_view(req, job)

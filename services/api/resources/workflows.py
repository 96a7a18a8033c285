"""``/v1/workflows``: chain, group and chord, created whole, read and cancelled.

A namespaced key's workflow and its steps live in its namespace (its quota counts the steps);
another namespace's workflow is a 404 to it (``services/api/tenancy.py``).
"""

from __future__ import annotations

from typing import Any

import falcon

from services.api.body import read_json
from services.api.middleware import namespace_of, submitted_by
from services.api.quotas import Quotas
from services.api.resources.jobs import MAX_BATCH, callback_delivery
from services.api.tenancy import own_workflow
from shared.errors import Conflict, FieldError, InvalidInput
from shared.ids import new_id
from shared.job import Job, utcnow
from shared.store.jobs import JobStore
from shared.store.workflows import WORKFLOW_TYPES, Workflow, WorkflowStatus, WorkflowStore
from shared.submission.callback_urls import callback_url_error
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job
from shared.workflows import WorkflowEngine

_FIELDS = {"type", "steps", "callback", "callback_url"}


class WorkflowsResource:
    scopes = {"POST": "write"}
    namespaced = True

    def __init__(self, submitter: Submitter, workflows: WorkflowStore, quotas: Quotas | None = None) -> None:
        self.submitter = submitter
        self.workflows = workflows
        self.quotas = quotas

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self.submitter.max_body_bytes)
        workflow_id = new_id()
        submission = Submission(
            request_id=req.context.request_id,
            workflow_id=workflow_id,
            namespace=namespace_of(req),
            submitted_by=submitted_by(req),
            allow_private_callbacks=self.submitter.allow_private_callbacks,
        )
        workflow, steps = self._build(body, workflow_id, submission)
        if self.quotas is not None:
            self.quotas.admit(submission.namespace, len(steps))
        self.workflows.create(workflow, steps)
        self.submitter.publish([job for job in steps if not job.held])
        resp.status = falcon.HTTP_202
        resp.set_header("Location", f"/v1/workflows/{workflow.id}")
        resp.media = workflow.to_api()

    def _build(self, body: Any, workflow_id: str, submission: Submission) -> tuple[Workflow, list[Job]]:
        errors: list[FieldError] = []
        if not isinstance(body, dict):
            raise InvalidInput("a workflow is a JSON object", [FieldError("/", "must be a JSON object")])
        errors.extend(FieldError(f"/{name}", "is not a field of a workflow") for name in sorted(set(body) - _FIELDS))
        kind = body.get("type")
        if kind not in WORKFLOW_TYPES:
            errors.append(FieldError("/type", f"must be one of {', '.join(WORKFLOW_TYPES)}"))
        requests = body.get("steps")
        if not isinstance(requests, list) or not 1 <= len(requests) <= MAX_BATCH:
            errors.append(FieldError("/steps", f"must be a list of 1 to {MAX_BATCH} job requests"))
            requests = []
        callback_request = body.get("callback")
        if kind == "chord" and callback_request is None:
            errors.append(FieldError("/callback", "a chord needs a callback job request"))
        if kind in ("chain", "group") and callback_request is not None:
            errors.append(FieldError("/callback", "only a chord has a callback"))
        callback_url = body.get("callback_url")
        if callback_url is not None:
            problem = callback_url_error(
                callback_url, "/callback_url", allow_private=self.submitter.allow_private_callbacks
            )
            if problem is not None:
                errors.append(problem)
        steps = [
            build_job(item, f"/steps/{i}", self.submitter.registry, submission, errors, held=kind == "chain" and i > 0)
            for i, item in enumerate(requests)
        ]
        callback = None
        if kind == "chord" and callback_request is not None:
            callback = build_job(callback_request, "/callback", self.submitter.registry, submission, errors, held=True)
        for base, job in [*((f"/steps/{i}", j) for i, j in enumerate(steps)), ("/callback", callback)]:
            if job is not None and job.idempotency_key:
                errors.append(FieldError(f"{base}/idempotency_key", "workflow steps take no idempotency key"))
        if errors:
            raise InvalidInput("the workflow is invalid; nothing was accepted", errors)
        jobs = [job for job in steps if job is not None]
        now = utcnow()
        workflow = Workflow(
            id=workflow_id,
            type=str(kind),
            status=WorkflowStatus.RUNNING,
            job_ids=[job.id for job in jobs],
            callback_job_id=callback.id if callback else None,
            created_at=now,
            updated_at=now,
            namespace=submission.namespace,
            callback_url=callback_url,
            push_due=callback_url is not None,
        )
        return workflow, [*jobs, *([callback] if callback else [])]


class WorkflowResource:
    scopes = {"GET": "read"}
    namespaced = True

    def __init__(self, workflows: WorkflowStore, store: JobStore) -> None:
        self.workflows = workflows
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, workflow_id: str) -> None:
        workflow = own_workflow(req, self.workflows.get(workflow_id))
        resp.media = workflow.to_api()
        if workflow.callback_url is not None:
            resp.media["callback_delivery"] = callback_delivery(self.store, workflow.push_job_id)


class WorkflowCancelResource:
    scopes = {"POST": "write"}
    namespaced = True

    def __init__(self, engine: WorkflowEngine) -> None:
        self.engine = engine

    def on_post(self, req: falcon.Request, resp: falcon.Response, workflow_id: str) -> None:
        workflow = own_workflow(req, self.engine.workflows.get(workflow_id))
        if workflow.status in WorkflowStatus.FINAL:
            raise Conflict(f"workflow {workflow_id} is already {workflow.status}")
        resp.status = falcon.HTTP_202
        resp.media = self.engine.cancel(workflow_id).to_api()

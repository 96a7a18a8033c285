"""Moving workflows forward: release the next steps, pass results on, end the workflow.

``advance`` looks at all of a workflow's jobs and does what their states call
for; it is idempotent, so the worker calls it whenever a workflow job ends and
the scheduler calls it for workflows that have not moved for a while (a worker
that died between recording a job and advancing its workflow cannot hang it).

- chain: steps run in order; a step whose task takes ``input`` gets the
  previous step's result. A step that ends other than ``succeeded`` cancels the
  rest and fails the workflow.
- group: steps run at once; succeeded when all succeed, failed as soon as one fails.
- chord: a group, then a callback whose ``input`` is the list of results; the
  callback is cancelled (never run) if a step fails.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from shared.broker.publishing import publish
from shared.errors import Conflict, NotFound, Unavailable
from shared.job import Job, JobStatus, utcnow
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.store.workflows import Workflow, WorkflowStatus, WorkflowStore

log = logging.getLogger(__name__)

INPUT_ARG = "input"
_BROKEN = (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED)


def takes_input(schema: dict[str, Any]) -> bool:
    return INPUT_ARG in schema.get("properties", {})


class WorkflowEngine:
    def __init__(self, workflows: WorkflowStore, store: JobStore, registry: TaskRegistry, broker: RedisBroker) -> None:
        self.workflows = workflows
        self.store = store
        self.registry = registry
        self.broker = broker

    def advance(self, workflow_id: str) -> None:
        workflow = self.workflows.get(workflow_id)
        if workflow.status in WorkflowStatus.FINAL:
            return
        steps = self.workflows.jobs_of(workflow)
        ordered = [steps[job_id] for job_id in workflow.job_ids]
        if workflow.type == "chain":
            self._advance_chain(workflow, ordered)
        else:
            callback = steps.get(workflow.callback_job_id) if workflow.callback_job_id else None
            self._advance_group(workflow, ordered, callback)
        self.workflows.touch(workflow.id)

    def _advance_chain(self, workflow: Workflow, ordered: list[Job]) -> None:
        for index, job in enumerate(ordered):
            if job.status is JobStatus.SUCCEEDED:
                continue
            if job.status in _BROKEN:
                self._fail(workflow, [later.id for later in ordered[index + 1 :]], because=job)
                return
            if job.held:
                self._release(job, ordered[index - 1].result)
            return
        self._end(workflow, WorkflowStatus.SUCCEEDED)

    def _advance_group(self, workflow: Workflow, ordered: list[Job], callback: Job | None) -> None:
        broken = next((job for job in ordered if job.status in _BROKEN), None)
        if broken is not None:
            self._fail(workflow, [callback.id] if callback else [], because=broken)
            return
        if not all(job.status is JobStatus.SUCCEEDED for job in ordered):
            return
        if callback is None:
            self._end(workflow, WorkflowStatus.SUCCEEDED)
        elif callback.held:
            self._release(callback, [job.result for job in ordered])
        elif callback.status.is_final:
            status = WorkflowStatus.SUCCEEDED if callback.status is JobStatus.SUCCEEDED else WorkflowStatus.FAILED
            self._end(workflow, status)

    def _release(self, job: Job, previous: Any) -> None:
        spec = self.registry.get(job.task)
        args = dict(job.args)
        if spec is not None and takes_input(spec.args_schema):
            args[INPUT_ARG] = previous
        released = self.workflows.release(job.id, args)
        if released is None:
            return  # another process released it
        try:
            self.store.mark_published(publish(self.broker, [released]))
        except Unavailable:
            log.warning("workflow step %s released; the relay publishes it once Redis is back", job.id)

    def _fail(self, workflow: Workflow, pending: list[str], *, because: Job) -> None:
        if pending:
            self.workflows.cancel_held(pending)
        status = WorkflowStatus.CANCELLED if because.status is JobStatus.CANCELLED else WorkflowStatus.FAILED
        self._end(workflow, status)
        log.info("workflow %s %s: job %s ended %s", workflow.id, status, because.id, because.status.value)

    def _end(self, workflow: Workflow, status: str) -> None:
        self.workflows.finish(workflow.id, status)

    def cancel(self, workflow_id: str) -> Workflow:
        """Cancel every step that has not ended; the workflow ends ``cancelled``."""
        workflow = self.workflows.get(workflow_id)
        steps = self.workflows.jobs_of(workflow)
        self.workflows.cancel_held([job.id for job in steps.values() if job.held])
        for job in steps.values():
            if not job.held and not job.status.is_final:
                try:
                    self.store.cancel(job.id)
                except (Conflict, NotFound) as exc:  # a step may have ended meanwhile
                    log.info("workflow %s: step %s not cancelled: %s", workflow_id, job.id, exc)
        self.workflows.finish(workflow_id, WorkflowStatus.CANCELLED)
        return self.workflows.get(workflow_id)

    def advance_stale(self, *, older_than_s: float = 5.0) -> int:
        ids = self.workflows.running_ids(updated_before=utcnow() - timedelta(seconds=older_than_s))
        for workflow_id in ids:
            self.advance(workflow_id)
        return len(ids)

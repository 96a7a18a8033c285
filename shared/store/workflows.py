"""Workflow rows and the step transitions that must happen at most once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from shared.errors import NotFound
from shared.job import Job, JobStatus, rfc3339, utcnow
from shared.store.engine import write_transaction
from shared.store.jobs import insert_job_rows
from shared.store.models import jobs, workflows

WORKFLOW_TYPES = ("chain", "group", "chord")


class WorkflowStatus:
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class Workflow:
    id: str
    type: str
    status: str
    job_ids: list[str]
    callback_job_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    #: Tenants: the namespace of the key that submitted it (None: none); its steps carry it too.
    namespace: str | None = None
    #: Push, as on jobs (``shared/job.py``).
    callback_url: str | None = None
    push_due: bool = False
    push_job_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "jobs": self.job_ids,
            "callback_job": self.callback_job_id,
            "created_at": rfc3339(self.created_at),
            "finished_at": rfc3339(self.finished_at),
            "namespace": self.namespace,
            "callback_url": self.callback_url,
        }


class WorkflowStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, workflow: Workflow, steps: list[Job]) -> None:
        """The workflow and all its job rows, in one transaction."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                workflows.insert().values(
                    id=workflow.id,
                    type=workflow.type,
                    status=workflow.status,
                    job_ids=workflow.job_ids,
                    callback_job_id=workflow.callback_job_id,
                    callback_url=workflow.callback_url,
                    push_due=workflow.push_due,
                    created_at=workflow.created_at,
                    updated_at=workflow.updated_at,
                    namespace=workflow.namespace,
                )
            )
            insert_job_rows(conn, steps)

    def get(self, workflow_id: str) -> Workflow:
        with self.engine.connect() as conn:
            row = conn.execute(select(workflows).where(workflows.c.id == workflow_id)).first()
        if row is None:
            raise NotFound(f"no workflow with id {workflow_id!r}")
        return Workflow(**dict(row._mapping))

    def jobs_of(self, workflow: Workflow) -> dict[str, Job]:
        ids = [*workflow.job_ids, *([workflow.callback_job_id] if workflow.callback_job_id else [])]
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.id.in_(ids)))
            return {job.id: job for job in map(Job.from_row, rows)}

    def finish(self, workflow_id: str, status: str) -> bool:
        """Set a final status once; False when another process got there first."""
        now = utcnow()
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(workflows)
                .where(workflows.c.id == workflow_id, workflows.c.status == WorkflowStatus.RUNNING)
                .values(status=status, updated_at=now, finished_at=now)
            )
        return done.rowcount == 1

    def release(self, job_id: str, args: dict[str, Any]) -> Job | None:
        """Turn a held step into a queued job with its final args; None if it was released already."""
        now = utcnow()
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.held.is_(True), jobs.c.status == JobStatus.SCHEDULED.value)
                .values(held=False, status=JobStatus.QUEUED.value, args=args, updated_at=now)
            )
            if done.rowcount != 1:
                return None
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
        return Job.from_row(row)

    def cancel_held(self, job_ids: list[str]) -> int:
        now = utcnow()
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.held.is_(True))
                .values(held=False, status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now)
            )
        return done.rowcount

    def running_ids(self, *, updated_before: datetime, limit: int = 200) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(workflows.c.id)
                .where(workflows.c.status == WorkflowStatus.RUNNING, workflows.c.updated_at < updated_before)
                .limit(limit)
            )
            return [row.id for row in rows]

    def touch(self, workflow_id: str) -> None:
        with write_transaction(self.engine) as conn:
            conn.execute(update(workflows).where(workflows.c.id == workflow_id).values(updated_at=utcnow()))

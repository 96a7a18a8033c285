"""Push: the jobs and workflows whose final state is still to be POSTed to their ``callback_url``.

A row submitted with a ``callback_url`` carries ``push_due``; whichever path ends it (a worker's
finish, a cancel, the crash recovery, dead-lettering, expiry, a replaced debounced job, a workflow
ending), the push relay (``services/scheduler/push.py``) finds it here by the partial index on
``push_due``, and ``record`` writes its delivery job (a ``webhooks.deliver`` job) and clears the flag
in one commit. No path that ends a job has to know about push, and a delivery survives restarts:
it is a job like any other, retried by the worker with backoff.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, select, update

from shared.job import FINAL_STATUSES, Job, JobStatus, rfc3339
from shared.store.engine import write_transaction
from shared.store.models import jobs, workflows
from shared.store.submissions import write_submission
from shared.store.workflows import Workflow, WorkflowStatus

#: The status code in the message of a refused or failed delivery (``webhooks.deliver``'s own wording).
_ANSWERED = re.compile(r"receiver answered (\d{3})\b")


@dataclass(frozen=True)
class DuePush:
    """A final job or workflow whose state is still to be announced."""

    kind: str  # "job" or "workflow"
    id: str
    status: str
    callback_url: str
    #: What the API shows of it (no traceback): the ``data`` of the delivery.
    body: dict[str, Any]
    namespace: str | None
    request_id: str | None
    finished_at: datetime | None


class PushStore:
    """The push relay's reads and writes (each one transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def due(self, limit: int = 200) -> list[DuePush]:
        """Final jobs, then final workflows, still to be announced, oldest first."""
        finals = [status.value for status in FINAL_STATUSES]
        with self.engine.connect() as conn:
            job_rows = conn.execute(
                select(jobs).where(jobs.c.push_due, jobs.c.status.in_(finals)).order_by(jobs.c.id).limit(limit)
            ).all()
            flow_rows = conn.execute(
                select(workflows)
                .where(workflows.c.push_due, workflows.c.status.in_(sorted(WorkflowStatus.FINAL)))
                .order_by(workflows.c.id)
                .limit(limit)
            ).all()
        due = []
        for job in map(Job.from_row, job_rows):
            due.append(
                DuePush("job", job.id, job.status.value, job.callback_url or "", job.to_api(),
                        job.namespace, job.request_id, job.finished_at)
            )  # fmt: skip
        for row in flow_rows:
            flow = Workflow(**dict(row._mapping))
            due.append(
                DuePush("workflow", flow.id, flow.status, flow.callback_url or "", flow.to_api(),
                        flow.namespace, None, flow.finished_at)
            )  # fmt: skip
        return due

    def record(self, deliveries: Sequence[tuple[DuePush, Job]], outbox_id: str) -> list[Job]:
        """Write each delivery job and clear its row's ``push_due`` in one commit; returns the jobs written.

        A row whose flag another relay cleared meanwhile (a leader that lost its lease mid-tick) gets
        no second delivery.
        """
        written: list[Job] = []
        with write_transaction(self.engine) as conn:
            for push, delivery in deliveries:
                table: Table = jobs if push.kind == "job" else workflows
                done = conn.execute(
                    update(table)
                    .where(table.c.id == push.id, table.c.push_due)
                    .values(push_due=False, push_job_id=delivery.id)
                )
                if done.rowcount == 1:
                    written.append(delivery)
            write_submission(conn, written, outbox_id, ())
        return written

    def skip(self, push: DuePush) -> None:
        """Give up announcing ``push`` (its URL can no longer be delivered to): clear its flag."""
        table: Table = jobs if push.kind == "job" else workflows
        with write_transaction(self.engine) as conn:
            conn.execute(update(table).where(table.c.id == push.id).values(push_due=False))


def delivery_view(delivery: Job) -> dict[str, Any]:
    """How the delivery of a job's or workflow's final state went, as ``callback_delivery`` shows it."""
    status_code = None
    error = None
    if delivery.status is JobStatus.SUCCEEDED and isinstance(delivery.result, dict):
        code = delivery.result.get("status")
        status_code = code if isinstance(code, int) else None
    elif delivery.error:
        error = str(delivery.error.get("message", ""))
        found = _ANSWERED.search(error)
        status_code = int(found.group(1)) if found else None
    return {
        "job_id": delivery.id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "status_code": status_code,
        "error": error,
        "last_attempt_at": rfc3339(delivery.started_at),
        "next_attempt_at": rfc3339(delivery.next_attempt_at),
        "delivered_at": rfc3339(delivery.finished_at) if delivery.status is JobStatus.SUCCEEDED else None,
    }

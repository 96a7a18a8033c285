"""The push relay: announce a job's or workflow's final state to its ``callback_url``.

Run by the scheduler leader at every ``maintenance.relay`` tick, after the outbox relay. It finds the
rows whose final state is still to be announced (``PushStore.due``) and submits one
``webhooks.deliver`` job for each, in the commit that clears their ``push_due``: the delivery is a
job like any other (Stripe and GitHub keep a delivery log per event the same way), so it is signed
with ``WEBHOOK_SIGNING_SECRET``, retried with backoff by the worker for a bounded time (the task's
``max_retries`` and backoff), survives restarts, and is visible as ``callback_delivery`` on the job.

The body is an event: ``{"id", "type": "job.<status>" | "workflow.<status>", "created_at", "data"}``
with ``data`` the job or workflow as ``GET`` shows it; ``id`` is the delivery job's id, the same as
the ``X-Jobrelay-Delivery`` header of every attempt, so a receiver drops a repeat.
"""

from __future__ import annotations

import logging
import time

from shared.errors import FieldError
from shared.ids import new_id
from shared.job import Job, rfc3339, utcnow
from shared.store.pushes import DuePush, PushStore
from shared.store.tasks import TaskRegistry
from shared.submission.submitter import Submitter
from shared.submission.validation import Submission, build_job

log = logging.getLogger(__name__)

DELIVERY_TASK = "webhooks.deliver"
#: How often, at most, the relay says that deliveries wait for a worker serving ``webhooks.deliver``.
WAITING_LOG_EVERY_S = 60.0


class PushRelay:
    def __init__(self, pushes: PushStore, registry: TaskRegistry, submitter: Submitter, *, batch: int = 200) -> None:
        self.pushes = pushes
        self.registry = registry
        self.submitter = submitter
        self.batch = batch
        self._waiting_logged_at = float("-inf")

    def run(self) -> int:
        """Submit the deliveries that fell due; returns how many."""
        total = 0
        while True:
            due = self.pushes.due(self.batch)
            if not due:
                return total
            if self.registry.get(DELIVERY_TASK) is None:
                if time.monotonic() - self._waiting_logged_at >= WAITING_LOG_EVERY_S:
                    self._waiting_logged_at = time.monotonic()
                    log.warning("%d callback delivery(ies) wait: no worker has registered %s", len(due), DELIVERY_TASK)
                return total
            built = [(push, job) for push in due if (job := self._delivery(push)) is not None]
            entry = new_id()
            written = self.pushes.record(built, entry)
            self.submitter.publish_handed([job for job in written if job.published_at is not None], [entry])
            total += len(written)
            if written:
                log.info("submitted %d callback delivery(ies)", len(written))
            if len(due) < self.batch:
                return total

    def _delivery(self, push: DuePush) -> Job | None:
        delivery_id = new_id()
        payload = {
            "id": delivery_id,
            "type": f"{push.kind}.{push.status}",
            "created_at": rfc3339(push.finished_at or utcnow()),
            "data": push.body,
        }
        errors: list[FieldError] = []
        body = {"task": DELIVERY_TASK, "args": {"url": push.callback_url, "payload": payload}}
        submission = Submission(request_id=push.request_id, namespace=push.namespace)
        job = build_job(body, "", self.registry, submission, errors)
        if job is None:
            # NOTE: the URL was checked at submission; a delivery that cannot be built now never will be.
            why = "; ".join(f"{e.path} {e.message}".strip() for e in errors)
            log.error("%s %s: its callback to %s cannot be delivered: %s", push.kind, push.id, push.callback_url, why)
            self.pushes.skip(push)
            return None
        job.id = delivery_id
        return job

"""The job-submission service: validate, commit, then publish, with the row durable before the answer.

The API's resources submit through here (the scheduler's fires write their rows in
``services/scheduler/runner.py`` with the same validation and publish); a job the
broker cannot take now stays in the store for the outbox relay.
"""

from __future__ import annotations

import logging

from dramatiq.brokers.redis import RedisBroker

from shared import metrics
from shared.broker.publishing import publish
from shared.errors import Unavailable
from shared.ids import new_id
from shared.job import Job
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.outbox import BackgroundWrites
from shared.submission.writer import SubmitWriter

log = logging.getLogger(__name__)


class Submitter:
    """Validate, commit, then publish: the row is durable before the 202."""

    def __init__(self, store: JobStore, registry: TaskRegistry, broker: RedisBroker, max_body_bytes: int) -> None:
        self.store = store
        self.registry = registry
        self.broker = broker
        self.max_body_bytes = max_body_bytes
        self.marks = BackgroundWrites(store.mark_published, "published marks")
        self.sent = BackgroundWrites(store.outbox_sent, "sent outbox entries")
        # NOTE: the writer publishes after the requests are answered; they are counted before.
        self.writer = SubmitWriter(store, self.publish_handed, self.sent)

    def submit(self, new_jobs: list[Job]) -> list[tuple[Job, bool]]:
        entry = new_id()
        stored = self.store.insert(new_jobs, outbox_id=entry)
        count_submitted([job for job, created in stored if created and not job.held])
        self.publish_handed([job for job, created in stored if created and job.published_at is not None], [entry])
        return stored

    def submit_grouped(self, new_jobs: list[Job]) -> list[tuple[Job, bool]]:
        """As ``submit``, committed and published together with the concurrent requests of this process."""
        stored = self.writer.insert(new_jobs)
        count_submitted([job for job, created in stored if created and not job.held])
        return stored

    def publish_handed(self, handed: list[Job], entries: list[str]) -> None:
        """Send jobs the store wrote marked published under outbox ``entries``, then drop the entries;
        if Redis is down, the entries stay and the relay sends the jobs."""
        if not handed:
            return
        try:
            publish(self.broker, handed)
        except Unavailable as exc:
            log.warning("broker unavailable, %d job(s) left for the relay: %s", len(handed), exc)
            return
        self.sent.add(entries)

    def publish(self, committed: list[Job], *, new: bool = True) -> None:
        """Hand committed unpublished jobs to Redis (counting them as submitted if ``new``); if it is
        down, the relay does."""
        if not committed:
            return
        if new:
            count_submitted(committed)
        try:
            self.marks.add(publish(self.broker, committed))
        except Unavailable as exc:
            log.warning("broker unavailable, %d job(s) left for the relay: %s", len(committed), exc)


def count_submitted(jobs: list[Job]) -> None:
    for job in jobs:
        metrics.jobs_submitted_total.labels(job.task, job.queue).inc()

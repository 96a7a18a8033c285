"""The job-submission service: commit new jobs with an outbox entry, then publish them; the row is durable first.

The API's resources and the scheduler's runner both submit through a ``Submitter``, and
neither imports the other. Each validates what it submits with ``validation.py`` first (a
request with ``build_job``, a schedule's tick with ``build_scheduled_job``); then ``submit``,
``submit_grouped`` and ``submit_once`` commit the new jobs the broker takes now marked
published under one outbox entry, send them to Redis, and delete the entry once they are
there. A job Redis cannot take now stays in the store with its entry, and the outbox relay
(``services/scheduler/relay.py``) sends it. ``publish`` sends rows committed unpublished
(workflow steps, jobs requeued by an operator).
"""

from __future__ import annotations

import logging

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.exc import IntegrityError

from shared import metrics, tracing
from shared.broker.publishing import publish
from shared.errors import Unavailable
from shared.ids import new_id
from shared.job import Job
from shared.settings import Settings
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry
from shared.submission.outbox import BackgroundWrites
from shared.submission.writer import SubmitWriter

log = logging.getLogger(__name__)


class Submitter:
    """Commit, then publish: the row is durable before the 202, and before a tick counts as fired."""

    def __init__(
        self,
        store: JobStore,
        registry: TaskRegistry,
        broker: RedisBroker,
        max_body_bytes: int = Settings.api_max_body_bytes,
        *,
        allow_private_callbacks: bool = False,
    ) -> None:
        self.store = store
        self.registry = registry
        self.broker = broker
        #: Read by the API's resources; the scheduler reads no request bodies.
        self.max_body_bytes = max_body_bytes
        #: ``CALLBACK_ALLOW_PRIVATE``, for the requests' ``Submission``.
        self.allow_private_callbacks = allow_private_callbacks
        self.marks = BackgroundWrites(store.mark_published, "published marks")
        self.sent = BackgroundWrites(store.outbox_sent, "sent outbox entries")
        # NOTE: the writer publishes after the requests are answered; they are counted before.
        self.writer = SubmitWriter(store, self.publish_handed, self.sent)

    def submit(self, new_jobs: list[Job]) -> list[tuple[Job, bool]]:
        """Commit ``new_jobs`` in one transaction, then publish the new ones; (job, created) pairs in order
        (a repeated idempotency key gives the stored job, as ``JobStore.insert``)."""
        return self._submit(new_jobs, count=True)

    def submit_once(self, job: Job) -> bool:
        """Commit, then publish, a job whose id stands for one event (a schedule's tick: ``tick_job_id``),
        so that the event makes one job however often, and by whichever process, it is submitted.

        False when a job of that id exists already (another scheduler replica fired the tick, or
        this one before a crash): nothing is written or sent then. Not counted in
        ``jobs_submitted_total``, which counts the jobs the API accepted.
        """
        try:
            self._submit([job], count=False)
        except IntegrityError:
            # NOTE: the job's primary key refused it; the outbox entry is in the same transaction, so
            # neither was written.
            return False
        return True

    def _submit(self, new_jobs: list[Job], *, count: bool) -> list[tuple[Job, bool]]:
        """The one path of every submission but the grouped one: the rows and their outbox entry in one
        commit, then one publish; if Redis is down, the entry stays and the relay sends the jobs."""
        entry = new_id()
        with tracing.span("store commit"):
            stored = self.store.insert(new_jobs, outbox_id=entry)
        if count:
            count_submitted([job for job, created in stored if created and not job.held])
        self.publish_handed([job for job, created in stored if created and job.published_at is not None], [entry])
        return stored

    def submit_grouped(self, new_jobs: list[Job]) -> list[tuple[Job, bool]]:
        """As ``submit``, committed and published together with the concurrent requests of this process."""
        with tracing.span("store commit"):
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

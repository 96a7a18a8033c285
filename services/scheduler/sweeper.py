"""Running rows nobody holds any more: ended by their task's retry policy, so nothing stays ``running`` for good.

A row says ``running`` while a worker holds its lease; the worker's heartbeat renews it, and a
dead worker's recovery (the supervisor's, or ``maintenance.requeue_orphans``) releases it and
puts its message back for another worker to claim. A row is stranded when that message is
gone too: Redis lost it (a crash before its AOF sync, a failover) while the job ran, a whole
node died after it was acked or dead-lettered, a delivery was skipped while the row stayed
claimed. Nothing would ever run such a job again or end it: the relay and the lost-message
reconcile send only waiting rows.

``maintenance.sweep`` (every 30 s, leader only) takes the running rows whose lease expired
more than ``grace_s`` ago, whose lease owner has no live heartbeat, and whose message is in no
queue, delay queue or ack set (a ``MessageSweep``, over several passes for a big backlog), and
ends their attempt as a crash's: ``retrying`` after the task's backoff with a new message,
``failed`` and dead when out of retries, ``cancelled`` when an operator asked (``record_lost``).
Each is counted in ``jobrelay_jobs_swept_total``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from dramatiq.brokers.redis import RedisBroker

from services.scheduler.metrics import jobs_swept_total
from services.scheduler.reconcile import ENTRIES_PER_PASS, MessageSweep
from shared.broker.orphans import live_workers, record_lost
from shared.clock import Clock, SystemClock
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: The type of error recorded for an attempt whose worker and message are both gone.
WORKER_LOST = "WorkerLost"
#: How long after its lease expired a row may still be in the hands of a recovery in progress.
SWEEP_GRACE_S = 60.0


class StrandedRuns:
    """Run by the scheduler leader every ``maintenance.sweep`` tick."""

    def __init__(
        self,
        store: JobStore,
        registry: TaskRegistry,
        broker: RedisBroker,
        *,
        dead_after_s: float,
        grace_s: float = SWEEP_GRACE_S,
        limit: int = 500,
        entries_per_pass: int = ENTRIES_PER_PASS,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.broker = broker
        self.dead_after_s = dead_after_s
        self.grace_s = grace_s
        self.limit = limit
        self.clock: Clock = clock or SystemClock()
        self.sweep = MessageSweep(broker.client, broker.namespace, entries_per_pass=entries_per_pass)

    def run(self) -> int:
        """One pass of the sweep for the rows' messages; once it is through, end the stranded rows' attempts."""
        if not self.sweep.running:
            expired = self.store.lease_expired(
                before=self.clock.now() - timedelta(seconds=self.grace_s), limit=self.limit
            )
            live = self._live({job.lease_owner for job in expired if job.lease_owner})
            # NOTE: the rows are read before Redis: a message that reached Redis since is seen, and
            # one that leaves it after (a worker's ack) leaves with its row final, which is not swept.
            self.sweep.start([job for job in expired if job.lease_owner not in live])
        missing = self.sweep.step()
        if not missing:
            return 0
        # A worker that beat again while the sweep went on holds its rows after all.
        live = self._live({job.lease_owner for job in missing if job.lease_owner})
        stranded = [job for job in missing if job.lease_owner not in live]
        lost = record_lost(
            self.store,
            self.registry,
            stranded,
            error_type=WORKER_LOST,
            message="its worker stopped holding it and its message was lost",
        )
        lost.publish_retries(self.broker)
        for outcome, jobs in (("retrying", lost.retrying), ("failed", lost.failed), ("cancelled", lost.cancelled)):
            if jobs:
                jobs_swept_total.labels(outcome).inc(len(jobs))
                log.warning(
                    "%d running job(s) nobody held, their message lost: %s (%s)",
                    len(jobs),
                    outcome,
                    ", ".join(job.id for job in jobs[:20]),
                )
        return len(lost)

    def _live(self, owners: set[str]) -> set[str]:
        return live_workers(self.broker.client, owners, dead_after_s=self.dead_after_s)

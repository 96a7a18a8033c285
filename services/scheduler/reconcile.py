"""Publishing again the jobs whose message Redis lost.

Redis answers a write before its AOF is on disk (``appendfsync everysec``), so a crash can lose
the messages of jobs whose rows say they were published; a failover to a replica that lagged
does the same. Nothing else would ever run those jobs: the outbox relay only sends rows that
were never published. This pass compares the waiting rows with the messages in Redis and
publishes again the ones missing twice in a row with their row unchanged (one look could
catch a message in motion between a delay queue and its queue). A message that was not lost
after all runs once anyway: the worker's claim skips the duplicate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.errors import DecodeError

from shared.broker.publishing import publish
from shared.clock import Clock, SystemClock
from shared.job import Job
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


class LostMessages:
    """Run by the scheduler leader every ``maintenance.reconcile`` tick; keeps its suspects between runs."""

    def __init__(
        self,
        store: JobStoreProtocol,
        broker: RedisBroker,
        *,
        min_age_s: float = 60.0,
        limit: int = 5000,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.min_age_s = min_age_s
        self.limit = limit
        self.clock: Clock = clock or SystemClock()
        self._suspects: dict[str, tuple[str, int]] = {}

    def run(self) -> int:
        """Publish again the jobs found without a message twice; returns how many."""
        waiting = self.store.waiting_published(
            older_than=self.clock.now() - timedelta(seconds=self.min_age_s), limit=self.limit
        )
        present = message_ids(self.broker, {job.queue for job in waiting}) if waiting else set()
        missing = {job.id: job for job in waiting if job.id not in present}
        lost = [job for job in missing.values() if self._suspects.get(job.id) == _state(job)]
        self._suspects = {job.id: _state(job) for job in missing.values()}
        if not lost:
            return 0
        sent = publish(self.broker, lost)
        for job_id in sent:
            self._suspects.pop(job_id, None)
        log.warning("published again %d job(s) whose message was lost from Redis: %s", len(sent), sent[:20])
        return len(sent)


def message_ids(broker: RedisBroker, queues: Iterable[str]) -> set[str]:
    """The job ids of every message held in Redis for ``queues`` (queued, delayed or in flight).

    A message in flight stays in its queue's message hash until it is acked, so a worker's ack
    set needs no scan of its own.
    """
    ids: set[str] = set()
    client = broker.client
    for queue in queues:
        # NOTE: delay queue first: a message due moves from it to its queue, so it cannot slip
        # between the two scans that way.
        for name in (dq_name(queue), queue):
            for _redis_id, data in client.hscan_iter(f"{broker.namespace}:{name}.msgs", count=1000):
                # An undecodable message is the worker's to dead-letter.
                with contextlib.suppress(DecodeError):
                    ids.add(dramatiq.Message.decode(data).message_id)
    return ids


def _state(job: Job) -> tuple[str, int]:
    return job.status.value, job.attempts

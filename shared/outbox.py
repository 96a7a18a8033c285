"""The outbox relay: publish job rows that were committed but never reached Redis."""

from __future__ import annotations

import logging
from datetime import timedelta

from dramatiq.brokers.redis import RedisBroker

from shared.broker import MAX_BROKER_DELAY, publish
from shared.job import utcnow
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)


def relay(store: JobStore, broker: RedisBroker, *, grace_s: float, batch: int = 500) -> int:
    """Publish unpublished rows older than ``grace_s`` (younger ones are still in their API request)."""
    total = 0
    horizon = utcnow() + MAX_BROKER_DELAY
    while True:
        pending = store.unpublished(older_than=utcnow() - timedelta(seconds=grace_s), limit=batch)
        due = [job for job in pending if (job.scheduled_for or job.created_at) < horizon]
        if not due:
            return total
        sent = publish(broker, due)
        store.mark_published(sent)
        total += len(sent)
        log.info("relayed %d unpublished job(s)", len(sent))
        if len(pending) < batch:
            return total

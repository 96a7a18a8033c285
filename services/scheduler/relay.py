"""The outbox relay: publish job rows that were committed but never reached Redis.

Two kinds are left for it: rows written unpublished (a delay beyond the broker's
horizon, a step released later, a publish that failed after the commit), and the
jobs of an outbox entry still there after ``grace_s`` (the API wrote them marked
published and deletes the entry once they are in Redis; a crash or a Redis outage
in between leaves it).

The store is typed by ``JobStoreProtocol`` and time read from a ``Clock``, so its unit
tests drive it with the store's twin, a fake clock and Dramatiq's ``StubBroker``.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from dramatiq.broker import Broker

from shared.broker.publishing import publish
from shared.clock import Clock, SystemClock
from shared.job import MAX_BROKER_DELAY
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


def relay(
    store: JobStoreProtocol,
    broker: Broker,
    *,
    grace_s: float,
    batch: int = 500,
    clock: Clock | None = None,
) -> int:
    """Publish unpublished rows and left outbox entries older than ``grace_s`` (younger ones are
    still in their API request or scheduler fire); returns how many jobs it sent."""
    clock = clock or SystemClock()
    total = _relay_entries(store, broker, grace_s=grace_s, clock=clock)
    while True:
        # NOTE: only rows the broker takes now: rows due later are left in the store, and a page
        # of them must not hide the due rows written after them.
        horizon = clock.now() + MAX_BROKER_DELAY
        pending = store.unpublished(
            older_than=clock.now() - timedelta(seconds=grace_s), limit=batch, due_before=horizon
        )
        if not pending:
            return total
        sent = publish(broker, pending)
        store.mark_published(sent)
        total += len(sent)
        log.info("relayed %d unpublished job(s)", len(sent))
        if len(pending) < batch:
            return total


def _relay_entries(store: JobStoreProtocol, broker: Broker, *, grace_s: float, clock: Clock, batch: int = 100) -> int:
    total = 0
    while True:
        entries = store.outbox_left(older_than=clock.now() - timedelta(seconds=grace_s), limit=batch)
        if not entries:
            return total
        sent = publish(broker, [job for _, waiting in entries for job in waiting])
        store.outbox_sent([entry_id for entry_id, _ in entries])
        total += len(sent)
        log.info("relayed %d job(s) of %d outbox entries left behind", len(sent), len(entries))
        if len(entries) < batch:
            return total

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
from collections.abc import Callable
from datetime import timedelta

from dramatiq.broker import Broker

from shared.broker.publishing import publish
from shared.clock import Clock, SystemClock
from shared.job import MAX_BROKER_DELAY
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


class OutboxRelay:
    """The relay of one scheduler process, run by the leader at every ``maintenance.relay`` tick.

    NOTE: the relay sends jobs, then deletes their outbox entries (or marks their rows
    published). When that write failed (a full disk, a store gone away), the next tick found
    the same entries and rows and sent the same jobs again: one more copy of each in Redis at
    every tick for as long as the store could not be written (on a full disk a job then ran
    twice and stayed ``running``). What was sent but not recorded is kept here; a tick first
    records it, and while it cannot, sends nothing. (A new leader does not know it: it sends
    those jobs once more, and the worker's claim skips the copy.)
    """

    def __init__(
        self,
        store: JobStoreProtocol,
        broker: Broker,
        *,
        grace_s: float,
        batch: int = 500,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.grace_s = grace_s
        self.batch = batch
        self.clock = clock or SystemClock()
        #: Entries whose jobs were sent, and rows sent, whose deletion or published mark failed.
        self._sent_entries: list[str] = []
        self._sent_rows: list[str] = []

    def run(self) -> int:
        """Publish unpublished rows and left outbox entries older than ``grace_s`` (younger ones are
        still in their API request or scheduler fire); returns how many jobs it sent. Raises the
        store's error, having sent nothing more, while what it sent before cannot be recorded."""
        self._record(self._sent_entries, self.store.outbox_sent)
        self._record(self._sent_rows, self.store.mark_published)
        total = self._relay_entries()
        while True:
            # NOTE: only rows the broker takes now: rows due later are left in the store, and a page
            # of them must not hide the due rows written after them.
            horizon = self.clock.now() + MAX_BROKER_DELAY
            pending = self.store.unpublished(
                older_than=self.clock.now() - timedelta(seconds=self.grace_s), limit=self.batch, due_before=horizon
            )
            if not pending:
                return total
            sent = publish(self.broker, pending)
            total += len(sent)
            self._sent_rows = list(sent)
            self._record(self._sent_rows, self.store.mark_published)
            log.info("relayed %d unpublished job(s)", len(sent))
            if len(pending) < self.batch:
                return total

    def _relay_entries(self, batch: int = 100) -> int:
        total = 0
        while True:
            entries = self.store.outbox_left(older_than=self.clock.now() - timedelta(seconds=self.grace_s), limit=batch)
            if not entries:
                return total
            sent = publish(self.broker, [job for _, waiting in entries for job in waiting])
            total += len(sent)
            self._sent_entries = [entry_id for entry_id, _ in entries]
            self._record(self._sent_entries, self.store.outbox_sent)
            log.info("relayed %d job(s) of %d outbox entries left behind", len(sent), len(entries))
            if len(entries) < batch:
                return total

    @staticmethod
    def _record(ids: list[str], write: Callable[[list[str]], None]) -> None:
        """Write what was sent (``ids``), emptied once written; the write's error goes to the caller."""
        if ids:
            write(ids)
            ids.clear()


def relay(
    store: JobStoreProtocol,
    broker: Broker,
    *,
    grace_s: float,
    batch: int = 500,
    clock: Clock | None = None,
) -> int:
    """One run of a relay of its own (``OutboxRelay.run``), which keeps nothing for a next run."""
    return OutboxRelay(store, broker, grace_s=grace_s, batch=batch, clock=clock).run()

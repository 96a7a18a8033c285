"""The outbox relay: publish job rows that were committed but never reached Redis."""

from __future__ import annotations

import logging
import threading
import time
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


class PublishMarks:
    """Marks published rows in the background, many per UPDATE, off the request's path.

    NOTE: a mark lost to a crash only means the relay publishes that job once more,
    and the worker's claim skips the duplicate; the 202 never waits for it.
    """

    def __init__(self, store: JobStore, *, interval_s: float = 0.02, max_batch: int = 5000) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run, name="jobrelay-publish-marks", daemon=True).start()

    def add(self, job_ids: list[str]) -> None:
        with self._lock:
            self._pending.extend(job_ids)
        self._wake.set()

    def take(self) -> list[str]:
        """Hand over the pending ids (at most ``max_batch``) to a caller that marks them in its own write."""
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        return batch

    def flush(self) -> None:
        batch = self.take()
        if batch:
            try:
                self.store.mark_published(batch)
            except Exception as exc:
                log.warning("could not mark %d job(s) published (the relay will resend them): %s", len(batch), exc)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.interval_s)
            self._wake.clear()
            self.flush()
            if self._pending:
                self._wake.set()

"""Acks of succeeded jobs and dead letters of failed ones, sent once their final status is committed,
many per Redis round trip.

A worker thread hands a succeeded or failed job's finish to the status writer (``finish_later``) and
moves on to its next message; this thread waits for those commits, acks (or dead-letters) their
messages in one script call per queue and lets their workflows move on. A crash before the ack
leaves the message in the worker's ack set, so it is recovered and its delivery skipped as a
duplicate of a finished job.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from services.worker.ack_sets import AckSets
from services.worker.outages import until_up
from shared.batches import take_batch
from shared.broker.waking import REDIS_DOWN
from shared.job import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ack:
    queue_name: str
    redis_message_id: str
    job: Job
    committed: Future[bool]
    #: Dead-letter the message (its job failed for good) instead of acking it.
    dead: bool = False


class Acker:
    """The consumers' ``DeferredAcks``: a finished job's ack (or nack) waits here for its commit."""

    def __init__(self, ack_sets: AckSets, *, on_final: Callable[[Job], None], max_batch: int = 512) -> None:
        self.ack_sets = ack_sets
        self.on_final = on_final
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Ack | None] = queue.SimpleQueue()
        #: Deferred acks by Redis message id (one per message copy), until the consumer takes them.
        self._deferred: dict[str, Callable[[str, str], None]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jobrelay-acker", daemon=True)
        self._thread.start()

    def defer(self, redis_message_id: str, committed: Future[bool], job: Job, *, dead: bool = False) -> None:
        """Ack this message copy once ``committed`` is, instead of when its thread is done; ``dead``:
        dead-letter it instead (the consumer's nack hands it over)."""

        def ack(queue_name: str, redis_message_id: str) -> None:
            item = _Ack(queue_name, redis_message_id, job, committed, dead)
            committed.add_done_callback(lambda _: self._queue.put(item))

        with self._lock:
            self._deferred[redis_message_id] = ack

    def take(self, redis_message_id: str) -> Callable[[str, str], None] | None:
        with self._lock:
            return self._deferred.pop(redis_message_id, None)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send the acks already committed, then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            batch, stopping = take_batch(self._queue, self.max_batch)
            if batch:
                self._send(batch)
            if stopping:
                return

    def _send(self, batch: list[_Ack]) -> None:
        refused = [item for item in batch if item.committed.exception() is not None]
        for item in refused:
            # NOTE: not acked: the message stays in this worker's ack set and is recovered (and its
            # job claimed again) once the process is gone; the status writer logged why.
            log.error("job %s: its outcome could not be stored; its message is left unacked", item.job.id)
        batch = [item for item in batch if item.committed.exception() is None]
        pairs = [(item.queue_name, item.redis_message_id) for item in batch if not item.dead]
        if pairs:
            until_up(lambda: self.ack_sets.ack_many(pairs), REDIS_DOWN, "Redis")
        dead = [(item.queue_name, item.redis_message_id, item.job.id) for item in batch if item.dead]
        if dead:
            until_up(lambda: self.ack_sets.dead_letter_many(dead), REDIS_DOWN, "Redis")
        for item in batch:
            if not item.committed.result():
                log.warning("job %s finished after its lease passed to another worker", item.job.id)
            self.on_final(item.job)

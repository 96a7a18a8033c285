"""Publishing again the jobs whose message Redis lost, and the bounded sweep that finds them.

Redis answers a write before its AOF is on disk (``appendfsync everysec``), so a crash can lose
the messages of jobs whose rows say they were published; a failover to a replica that lagged
does the same. Nothing else would ever run those jobs: the outbox relay only sends rows that
were never published. This pass compares the waiting rows with the messages in Redis and
publishes again the ones missing from two sweeps in a row with their row unchanged (one look
could catch a message in motion between a delay queue and its queue). A message that was not
lost after all runs once anyway: the worker's claim skips the duplicate.

A sweep reads the message hashes of the jobs' queues at most ``ENTRIES_PER_PASS`` bodies per
pass (``MessageSweep``): a million queued messages take fifty passes, each one a few tenths of
a second of the scheduler's time and two hundred entries per Redis command, where one pass used
to decode them all (3 s at 100,000 queued, past its 30 s period at a million).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.errors import DecodeError
from dramatiq.message import get_encoder

from shared.broker.bands import queue_key
from shared.broker.publishing import publish
from shared.clock import Clock, SystemClock
from shared.job import Job
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)

#: Message bodies a sweep decodes per pass at most (a few tenths of a second).
ENTRIES_PER_PASS = 20_000
#: Entries asked of each ``HSCAN`` (a hint to Redis: about that many, well under a millisecond of its time).
COUNT_PER_CALL = 200


class MessageSweep:
    """Which of some jobs have a message in Redis (queued, delayed or in flight), over as many passes as it takes.

    A sweep scans, for each queue of its jobs, the delay queue's message hash and then the
    queue's; its cursor carries over from one ``step`` to the next. ``HSCAN`` returns every entry
    present from the start of a scan to its end, however long it takes; a message that moves
    from the delay queue to its queue meanwhile is found in the queue, which is scanned after.
    A message in flight stays in its queue's hash until it is acked, so the ack sets need no scan.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        entries_per_pass: int = ENTRIES_PER_PASS,
        count_per_call: int = COUNT_PER_CALL,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.entries_per_pass = entries_per_pass
        self.count_per_call = count_per_call
        #: Bodies decoded by the last ``step``.
        self.decoded = 0
        self._jobs: dict[str, Job] = {}
        self._hashes: list[str] = []
        self._cursor = 0
        self._seen: set[str] = set()

    @property
    def running(self) -> bool:
        """A sweep is under way (started and not through)."""
        return bool(self._jobs)

    def start(self, jobs: Sequence[Job]) -> None:
        """Look for these jobs' messages (the rows read before Redis: a message sent since is found)."""
        self._jobs = {job.id: job for job in jobs}
        queues = sorted({job.queue for job in jobs})
        # NOTE: delay queue first: a message due moves from it to its queue, so it cannot slip
        # between the two scans that way.
        self._hashes = [
            queue_key(self.namespace, name) + ".msgs" for queue in queues for name in (dq_name(queue), queue)
        ]
        self._cursor = 0
        self._seen = set()

    def step(self) -> list[Job] | None:
        """Read up to ``entries_per_pass`` bodies: once the sweep is through, the jobs seen in none; else None."""
        decode = get_encoder().decode
        self.decoded = 0
        while self._hashes and self.decoded < self.entries_per_pass:
            found: tuple[int, dict[bytes, bytes]]
            found = self.client.hscan(self._hashes[0], self._cursor, count=self.count_per_call)  # type: ignore[assignment]
            self._cursor = int(found[0])
            for data in found[1].values():
                try:
                    job_id = decode(data)["message_id"]
                except (DecodeError, KeyError, TypeError):
                    continue  # an undecodable message is the worker's to dead-letter
                if job_id in self._jobs:
                    self._seen.add(job_id)
            self.decoded += len(found[1])
            if self._cursor == 0:
                self._hashes.pop(0)
        if self._hashes:
            return None
        missing = [job for job_id, job in self._jobs.items() if job_id not in self._seen]
        self._jobs, self._seen = {}, set()
        return missing


class LostMessages:
    """Run by the scheduler leader every ``maintenance.reconcile`` tick; keeps its sweep and suspects between runs."""

    def __init__(
        self,
        store: JobStoreProtocol,
        broker: RedisBroker,
        *,
        min_age_s: float = 60.0,
        limit: int = 5000,
        entries_per_pass: int = ENTRIES_PER_PASS,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.min_age_s = min_age_s
        self.limit = limit
        self.clock: Clock = clock or SystemClock()
        self.sweep = MessageSweep(broker.client, broker.namespace, entries_per_pass=entries_per_pass)
        self._suspects: dict[str, tuple[str, int]] = {}

    def run(self) -> int:
        """One pass of the sweep; once it is through, publish again the jobs missing twice. Returns how many."""
        if not self.sweep.running:
            self.sweep.start(
                self.store.waiting_published(
                    older_than=self.clock.now() - timedelta(seconds=self.min_age_s), limit=self.limit
                )
            )
        missing = self.sweep.step()
        if missing is None:
            return 0
        lost = [job for job in missing if self._suspects.get(job.id) == _state(job)]
        self._suspects = {job.id: _state(job) for job in missing}
        if not lost:
            return 0
        sent = publish(self.broker, lost)
        for job_id in sent:
            self._suspects.pop(job_id, None)
        log.warning("published again %d job(s) whose message was lost from Redis: %s", len(sent), sent[:20])
        return len(sent)


def _state(job: Job) -> tuple[str, int]:
    return job.status.value, job.attempts

"""Group commit for submissions: one thread per API process inserts and publishes for all its threads.

Each single submit committing its own row queues on the SQLite write lock (and pays a
PostgreSQL round trip and commit), then makes its own Redis round trip. The request
threads of a gunicorn worker hand their jobs here instead: the writer inserts every
pending request's jobs in one transaction and answers each waiting request as soon as
that commit is done (the row is durable before the 202), and a publisher thread sends
the new jobs to Redis in one round trip per batch, while the writer commits the next.
Each commit writes its new jobs marked published under one outbox entry, deleted in a
later commit once they are in Redis; a job whose publish fails, or whose process dies
before it, is sent by the outbox relay from the entry left behind. The same design as
``services/worker/status_writer.py``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from shared.batches import take_batch
from shared.errors import Conflict
from shared.ids import new_id
from shared.job import Job
from shared.store.engine import STORE_DOWN
from shared.store.jobs import JobStore
from shared.submission.outbox import BackgroundWrites

log = logging.getLogger(__name__)
Stored = list[tuple[Job, bool]]


@dataclass
class _Pending:
    jobs: Sequence[Job]
    future: Future[Stored]


@dataclass
class _Handed:
    """The jobs one commit wrote marked published, under outbox entry ``entry``."""

    jobs: list[Job]
    entry: str


class SubmitWriter:
    """Insert (and then publish) the jobs of concurrent requests together.

    ``publish`` is called by the publisher thread, after the requests are answered,
    with the jobs the batches wrote marked published and their outbox entries; it
    hands the entries to ``sent`` once the jobs are in Redis, and the next commit
    deletes them. If it raises, the outbox relay publishes the jobs later.
    """

    def __init__(
        self,
        store: JobStore,
        publish: Callable[[list[Job], list[str]], None],
        sent: BackgroundWrites,
        *,
        max_batch: int = 64,
    ) -> None:
        self.store = store
        self.publish = publish
        self.sent = sent
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._owner_pid: int | None = None

    def insert(self, new_jobs: Sequence[Job]) -> Stored:
        """As ``JobStore.insert``, committed with other threads' requests; the new jobs are published next."""
        self._ensure_threads()
        future: Future[Stored] = Future()
        self._queue.put(_Pending(new_jobs, future))
        return future.result()

    def _ensure_threads(self) -> None:
        # NOTE: started on first use, in the process that serves requests: gunicorn may
        # build the app before it forks, and a thread does not survive a fork.
        if self._owner_pid == os.getpid():
            return
        with self._start_lock:
            if self._owner_pid != os.getpid():
                self._queue = queue.SimpleQueue()
                committed: queue.SimpleQueue[_Handed | None] = queue.SimpleQueue()
                threading.Thread(
                    target=self._commit_loop, args=(self._queue, committed), name="jobrelay-submit-writer", daemon=True
                ).start()
                # NOTE: a second thread publishes, so one batch's Redis round trip overlaps
                # the next batch's commit instead of delaying it.
                threading.Thread(
                    target=self._publish_loop, args=(committed,), name="jobrelay-submit-publisher", daemon=True
                ).start()
                self._owner_pid = os.getpid()

    def _commit_loop(
        self, pending: queue.SimpleQueue[_Pending | None], committed: queue.SimpleQueue[_Handed | None]
    ) -> None:
        while True:
            batch, _ = take_batch(pending, self.max_batch)
            # NOTE: the deletions of sent entries ride along in this commit instead of taking the write lock again.
            sent = self.sent.take()
            entry = new_id()
            try:
                outcomes = self.store.insert_groups([item.jobs for item in batch], outbox_id=entry, sent=sent)
            except BaseException as exc:
                # The store is down or locked: every waiting request answers 503, nothing was stored.
                self.sent.add(sent)
                if isinstance(exc, STORE_DOWN):
                    # NOTE: the requests queued meanwhile waited for this commit; they fail with it
                    # instead of waiting for the next one to fail too, STORE_TIMEOUT_S later.
                    batch.extend(_queued(pending))
                for item in batch:
                    item.future.set_exception(exc)
                continue
            handed = [
                job
                for outcome in outcomes
                if not isinstance(outcome, Conflict)
                for job, is_new in outcome
                if is_new and job.published_at is not None
            ]
            if handed:
                committed.put(_Handed(handed, entry))
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Conflict):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    def _publish_loop(self, committed: queue.SimpleQueue[_Handed | None]) -> None:
        while True:
            batch, _ = take_batch(committed, self.max_batch)
            handed = [job for item in batch for job in item.jobs]
            try:
                self.publish(handed, [item.entry for item in batch])
            except Exception:
                # The rows are committed and their outbox entries stand: the outbox relay sends them.
                log.exception("could not publish %d committed job(s); the outbox relay will", len(handed))


def _queued(pending: queue.SimpleQueue[_Pending | None]) -> list[_Pending]:
    """The requests waiting in ``pending`` now, taken off it (a stop request stays)."""
    taken: list[_Pending] = []
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return taken
        if item is None:
            pending.put(None)
            return taken
        taken.append(item)

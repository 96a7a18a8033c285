"""Interrupting running jobs: cancellation, and the hard time limit that replaces the process.

One thread per worker process checks, every ``interval_s``:

- running jobs an operator cancelled: ``Cancelled`` is raised in the task's
  thread, which takes effect at its next Python bytecode (within a second for
  tasks that return to Python at least that often);
- jobs past their hard time limit (the soft limit plus a grace): the soft limit
  raised ``TimeLimitExceeded`` already, so the task is stuck in C code or
  blocking I/O. The job's outcome is recorded (retrying or failed) and the
  process exits; the supervisor requeues its other messages and starts a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from dramatiq.middleware.threading import raise_thread_exception

from services.worker.middleware.claims import Attempt, Claims
from services.worker.middleware.outcomes import Cancelled, Outcomes
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)

#: Exit code of a process replaced for a hard time limit (EX_SOFTWARE).
HARD_LIMIT_EXIT_CODE = 70


def hard_limit_s(soft_limit_s: float) -> float:
    """The soft limit plus a grace of 10% (at least 5 s) for the task to unwind."""
    return soft_limit_s + max(5.0, 0.1 * soft_limit_s)


class Watchdog(Middleware):
    def __init__(
        self,
        store: JobStoreProtocol,
        claims: Claims,
        outcomes: Outcomes,
        *,
        interval_s: float = 0.25,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.store = store
        self.claims = claims
        self.outcomes = outcomes
        self.interval_s = interval_s
        self.exit_process = exit_process
        self._signalled: set[str] = set()
        self._stopping = threading.Event()

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        threading.Thread(target=self._run, name="jobrelay-watchdog", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:
                log.exception("watchdog check failed; next check in %.2fs", self.interval_s)

    def check_once(self) -> None:
        running = self.claims.running()
        # NOTE: the hard limit first, and without the store: a task stuck in C code must be replaced
        # even while the store is away (the cancel checks below ask it).
        self._enforce_hard_limits(running)
        reserved = self.claims.reservations.job_ids()
        if reserved:
            self.outcomes.cancel_reserved(set(self.store.cancel_requested_among(reserved)))
        if not running:
            self._signalled.clear()
            return
        by_id = {entry.job.id: entry for entry in running}
        for job_id in self.store.cancel_requested_among(by_id):
            entry = by_id[job_id]
            if job_id in self._signalled or not self.claims.is_running(job_id, entry.thread_id):
                continue
            self._signalled.add(job_id)
            log.info("interrupting cancelled job %s", job_id)
            raise_thread_exception(entry.thread_id, Cancelled)
        self._signalled &= set(by_id)

    def _enforce_hard_limits(self, running: list[Attempt]) -> None:
        """Replace this process when a task ran past its hard limit (one whose outcome hooks are
        running, waiting out a store or Redis outage, is past its task and not counted)."""
        now = time.monotonic()
        for entry in running:
            limit = entry.job.time_limit_s
            if limit is None or not entry.in_task or now - entry.started_s < hard_limit_s(limit):
                continue
            log.critical(
                "job %s ran past its hard time limit (%.1fs); replacing this worker process",
                entry.job.id,
                hard_limit_s(limit),
            )
            self.outcomes.record_hard_timeout(entry.job, hard_limit_s(limit))
            logging.shutdown()
            self.exit_process(HARD_LIMIT_EXIT_CODE)
            return

"""Interrupting running jobs: cancellation at the next bytecode, from a thread of the worker process.

One thread per worker process checks, every ``interval_s``, the running jobs an operator
cancelled: ``Cancelled`` is raised in the task's thread, which takes effect at its next Python
bytecode (within a second for tasks that return to Python at least that often), and the jobs
claimed ahead that were cancelled before they started are recorded so.

What a thread of this process cannot do is enforce anything while a task holds the GIL in C code,
or sits in a C call that ignores async exceptions. The hard time limit, and a cancel still running
after its grace, are the supervisor's (``services/worker/limits.py``): it reads the attempts'
deadlines from the ``HeldJobs`` file and kills the process. This middleware tells that file when a
task returned (``past_task``), so an attempt whose outcome hooks wait out an outage is not killed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from dramatiq.middleware.threading import raise_thread_exception

from services.worker.held_jobs import HeldJobs
from services.worker.middleware.claims import Claims
from services.worker.middleware.outcomes import Cancelled, Outcomes
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)


class Watchdog(Middleware):
    def __init__(
        self,
        store: JobStoreProtocol,
        claims: Claims,
        outcomes: Outcomes,
        *,
        held: HeldJobs | None = None,
        interval_s: float = 0.25,
    ) -> None:
        self.store = store
        self.claims = claims
        self.outcomes = outcomes
        self.held = held or HeldJobs(None)
        self.interval_s = interval_s
        self._signalled: set[str] = set()
        self._stopping = threading.Event()

    def after_worker_boot(self, broker: Broker, worker: object) -> None:
        threading.Thread(target=self._run, name="jobrelay-watchdog", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: object) -> None:
        self._stopping.set()

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        # NOTE: the first of the after hooks that matter (listed late, run early): the task is over.
        self.held.past_task()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:
                log.exception("watchdog check failed; next check in %.2fs", self.interval_s)

    def check_once(self) -> None:
        running = self.claims.running()
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

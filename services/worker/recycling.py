"""Recycling: a worker process, or an isolation child, replaced after so many jobs or above a memory limit.

A task that leaks (a cache that only grows, a C library that never frees) grows its
process until the machine kills something. Celery's answer, kept here: after a job
ends, a process that ran ``MAX_JOBS_PER_CHILD`` jobs or holds more than
``MAX_MEMORY_PER_CHILD_MB`` MiB resident is replaced. A worker process stops taking
jobs, lets its running ones finish (the SIGTERM path) and exits with
``RECYCLED_EXIT_CODE``; its supervisor starts a new one at once, neither a crash nor
a young death. An isolation child is stopped between two jobs of its thread and the
next job starts a new one (``isolation/pool.py``). Both are counted in
``jobrelay_worker_recycled_total{reason, kind}``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from services.worker.middleware.claims import Claims
from shared import metrics
from shared.settings import Settings

log = logging.getLogger(__name__)

#: Exit code of a worker process that stopped to be replaced (EX_TEMPFAIL): not a crash.
RECYCLED_EXIT_CODE = 75
MIB = 1 << 20
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of ``pid`` (this process by default) from ``/proc``; None where it cannot be read."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class RecycleLimits:
    """``MAX_JOBS_PER_CHILD`` and ``MAX_MEMORY_PER_CHILD_MB``; 0 turns either off."""

    max_jobs: int = 0
    max_memory_mb: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RecycleLimits:
        return cls(max_jobs=settings.max_jobs_per_child, max_memory_mb=settings.max_memory_per_child_mb)

    def reason(self, jobs: int, rss: Callable[[], int | None]) -> str | None:
        """``jobs`` or ``memory`` when a process that ran ``jobs`` jobs is due for replacement, else None.

        ``rss`` is only asked when the memory limit is on (reading ``/proc`` costs a system call).
        """
        if self.max_jobs and jobs >= self.max_jobs:
            return "jobs"
        if self.max_memory_mb:
            resident = rss()
            if resident is not None and resident > self.max_memory_mb * MIB:
                return "memory"
        return None


class ProcessRecycling(Middleware):
    """Counts this worker process's attempts; at a limit it sets ``stop``, and the process exits recycled.

    Listed right after ``Claims``: its after hook runs once the attempt's outcome is recorded.
    """

    def __init__(
        self, claims: Claims, limits: RecycleLimits, *, stop: threading.Event, rss: Callable[[], int | None] = rss_bytes
    ) -> None:
        self.claims = claims
        self.limits = limits
        self.stop = stop
        self.rss = rss
        #: Why this process is being replaced, once it is.
        self.reason: str | None = None
        self._jobs = 0
        self._lock = threading.Lock()
        self._worker: Any = None

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._worker = worker

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.claims.current(message) is None or not (self.limits.max_jobs or self.limits.max_memory_mb):
            return
        with self._lock:
            self._jobs += 1
            if self.reason is not None:
                return
            self.reason = self.limits.reason(self._jobs, self.rss)
            if self.reason is None:
                return
        log.info(
            "worker process %d recycled (%s) after %d job(s): finishing its running jobs",
            os.getpid(),
            self.reason,
            self._jobs,
        )
        metrics.worker_recycled_total.labels(self.reason, "process").inc()
        # NOTE: each worker thread ends its loop after its current job, before it takes another
        # already fetched (those are put back by the stop, as on SIGTERM); then the process stops.
        for thread in getattr(self._worker, "workers", ()):
            thread.stop()
        self.stop.set()

"""What a dead worker process leaves, put right by its supervisor: attempts counted, claims given back, messages back.

A task that kills its process (a segfault in C code, ``os.abort()``, the OOM killer) never
reaches the outcome hooks, so nothing records its attempt. Put back with its claim released,
such a job ran again at once, at the front of its queue, forever. Here, for a process that
died on its own (a signal, or an exit code other than 0):

- the attempts its threads were inside (``R`` in its ``HeldJobs`` file) count, all of them, since
  nothing tells which thread killed the process: each is recorded
  by its task's retry policy (``record_lost``), ``retrying`` after its backoff with a new message,
  or ``failed`` and dead-lettered, with the error ``WorkerCrashed``: ``worker process died:
  SIGSEGV`` (or ``exit code 3``); a job an operator asked to cancel is ``cancelled``. Their old
  messages leave the dead process's ack set, so none runs again before its time;
- the jobs it had only claimed ahead (``A``) are given back uncounted (``unclaim``);
- the rest is recovered as before (``requeue_orphans``): leases released, messages back at the
  front of their queues.

When the process left a fatal-error report naming the task that killed it (``fault_report.py``:
a segfault or an abort in a task's thread), only that task's attempts count and the others go
back uncounted, as claims ahead do. A process stopped on purpose (SIGTERM) has nothing counted.
One its supervisor killed (``limits.py``) has only the attempts it was killed for counted: past
their hard limit, recorded by their retry policy with ``HardTimeLimitExceeded``; cancelled and
still running after their grace, ``cancelled``. Its other attempts go back to their queues
uncounted (``unclaim``, as the claims ahead).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import redis
from dramatiq.broker import Broker

from services.worker.fault_report import Location, culprits, fault_report_path
from services.worker.held_jobs import held_jobs_path, read_held
from services.worker.limits import KILL_TIME_LIMIT, Kill
from services.worker.middleware.outcomes import HardTimeLimitExceeded
from shared import metrics
from shared.broker.orphans import LostAttempts, record_lost, requeue_orphans
from shared.job import Job
from shared.store.jobs import JobStore
from shared.store.tasks import TaskRegistry

log = logging.getLogger(__name__)

#: The type of error recorded for an attempt whose process died under it.
WORKER_CRASHED = "WorkerCrashed"


def died_of(returncode: int) -> str:
    """``SIGSEGV`` for a process a signal ended (Popen's negative return code), ``exit code 3`` for one that exited."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class CrashRecovery:
    """The supervisor's recovery of its dead children, in two steps: the store's, then Redis'."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        registry: TaskRegistry,
        broker: Broker,
        *,
        data_dir: Path,
        task_locations: dict[Location, str] | None = None,
    ) -> None:
        """``task_locations``: where each task's function lives (``fault_report.task_locations``), to find
        in a crashed process's fatal-error report which task killed it."""
        self.client = client
        self.store = store
        self.registry = registry
        self.broker = broker
        self.data_dir = data_dir
        self.task_locations = task_locations or {}

    def settle(self, owner: str, *, cause: str | None, kill: Kill | None = None) -> LostAttempts:
        """Count the attempts ``owner`` died under and give back its claims ahead.

        ``cause``: what it died of; None for a process stopped on purpose, which counts nothing
        but the attempts ``kill`` names (its supervisor killed it for them).
        Without its file (a process that could not keep one) nothing is counted or given back here.
        """
        held = read_held(held_jobs_path(self.data_dir, owner))
        if held is None and kill is None:
            return LostAttempts()
        rows = self.store.running_of(owner)
        given_back = {job.id for job in rows if held is not None and job.id in held.ahead}
        if kill is not None and held is not None:
            # NOTE: killed on purpose for other attempts: these ran beside them, and cost nothing.
            given_back |= {job.id for job in rows if job.id in held.running and job.id not in kill.job_ids}
        if given_back:
            self.store.unclaim(owner, sorted(given_back))
        if kill is not None:
            lost = self._record_killed(rows, kill)
        else:
            crashed = [job for job in rows if held is not None and job.id in held.running] if cause is not None else []
            named = culprits(fault_report_path(self.data_dir, owner), self.task_locations) if crashed else set()
            if named:
                # The fatal-error report names the task that killed the process: only its attempts count.
                # The jobs beside it go back to their queue with the rest (``requeue``), their attempt
                # not recorded as failed: they run again at once, as after a stop on purpose.
                crashed = [job for job in crashed if job.task in named]
            lost = record_lost(
                self.store, self.registry, crashed, error_type=WORKER_CRASHED, message=f"worker process died: {cause}"
            )
        self._count(lost, cause or (kill.reason if kill else None))
        return lost

    def _record_killed(self, rows: list[Job], kill: Kill) -> LostAttempts:
        """The attempts a child was killed for: past their hard limit, or cancelled past their grace."""
        killed = [job for job in rows if job.id in kill.job_ids]
        if kill.reason == KILL_TIME_LIMIT:
            message = f"the task ran past its hard time limit of {kill.limit_s:g}s; its worker process was replaced"
            return record_lost(
                self.store, self.registry, killed, error_type=HardTimeLimitExceeded.__name__, message=message
            )
        # Cancelled past their grace: ``lost_attempt_end`` records each ``cancelled`` (its cancel request).
        return record_lost(self.store, self.registry, killed, error_type="Cancelled", message="cancelled while running")

    @staticmethod
    def _count(lost: LostAttempts, cause: str | None) -> None:
        for job in lost.retrying:
            metrics.jobs_retried_total.labels(job.task, job.queue).inc()
            log.warning("job %s: its worker process died (%s) in attempt %d; retrying", job.id, cause, job.attempts)
        for job in lost.failed:
            metrics.jobs_failed_total.labels(job.task, job.queue).inc()
            log.error("job %s: its worker process died (%s) in attempt %d; failed", job.id, cause, job.attempts)
        for job in lost.cancelled:
            metrics.jobs_cancelled_total.labels(job.task, job.queue).inc()
            log.info("job %s cancelled: its worker process died (%s) while it ran", job.id, cause)

    def requeue(self, owner: str, lost: LostAttempts) -> int:
        """Send the counted attempts' next messages, drop or dead-letter their old ones, put back the rest."""
        lost.publish_retries(self.broker)
        moved = requeue_orphans(
            self.client,
            self.store,
            dead_after_s=0,
            workers=[owner],
            drop=[job.id for job in lost.retrying + lost.cancelled],
            dead=[job.id for job in lost.failed],
        )
        held_jobs_path(self.data_dir, owner).unlink(missing_ok=True)
        fault_report_path(self.data_dir, owner).unlink(missing_ok=True)
        return moved

"""Hard time limits and cancel escalation, decided by the supervisor from outside the child's GIL.

A task holding the GIL in C code (``sum(range(10**10))``, a pathological ``re`` match) stops every
other thread of its process: the watchdog thread that would raise ``Cancelled`` or enforce the hard
limit, and the heartbeat thread. A thread of the same process can therefore not enforce either.
The child writes, as each attempt starts, its hard deadline and its cancel grace into its
``HeldJobs`` file (``held_jobs.py``); its supervisor, a process the task cannot block, reads those
records every poll and kills the child (SIGKILL) when one of its attempts is overdue:

- past its hard limit (the soft limit plus a grace for the task to unwind): the job is recorded
  failed or retrying with ``HardTimeLimitExceeded``, by its retry policy;
- cancelled and still running ``cancel_grace_s`` after the supervisor saw the cancel request (the
  in-process watchdog raises ``Cancelled`` at the next bytecode first; this is for a task blocked in
  C): the job is recorded ``cancelled``.

Either way the other attempts of that child go back to their queues without costing an attempt
(``crashes.py``). This module holds the pure parts: the limits of an attempt, and the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from shared.catalog import DEFAULT_CANCEL_GRACE_S, Catalog
from shared.errors import TaskError
from shared.job import Job

#: Labels of ``jobrelay_worker_kills_total``: why the supervisor killed a child.
KILL_TIME_LIMIT = "time_limit"
KILL_CANCEL = "cancel"


def hard_limit_s(soft_limit_s: float) -> float:
    """The soft limit plus a grace of 10% (at least 5 s) for the task to unwind."""
    return soft_limit_s + max(5.0, 0.1 * soft_limit_s)


@dataclass(frozen=True)
class Limits:
    """What an attempt's record tells the supervisor: its hard limit (None: none) and its cancel grace."""

    hard_limit_s: float | None = None
    cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S


def job_limits(job: Job) -> Limits:
    """The limits of a job whose task the process does not know: its row's time limit, the default grace."""
    return Limits(hard_limit_s(job.time_limit_s) if job.time_limit_s is not None else None)


#: An isolated job's hard limit is its waiting thread's to enforce, by killing its child alone; the
#: supervisor kills the whole process only this much later, if that thread could not.
ISOLATED_BACKSTOP_S = 5.0


def catalog_limits(catalog: Catalog) -> Callable[[Job], Limits]:
    """The limits of each job by its row's time limit and its task's ``cancel_grace_s``."""

    def limits_of(job: Job) -> Limits:
        try:
            spec = catalog.get(job.task).spec
        except TaskError:
            return job_limits(job)
        hard_s = job_limits(job).hard_limit_s
        if hard_s is not None and spec.isolation == "process":
            hard_s += ISOLATED_BACKSTOP_S
        return Limits(hard_s, spec.cancel_grace_s)

    return limits_of


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt a child's thread is inside, as its ``HeldJobs`` record says (monotonic clock)."""

    job_id: str
    started_s: float
    #: None: no hard limit.
    deadline_s: float | None
    cancel_grace_s: float
    #: False once the task returned: its outcome hooks may wait out an outage, and are left alone.
    in_task: bool = True


@dataclass(frozen=True)
class Kill:
    """Why a child is killed: ``reason`` (a metric label) and the jobs it is killed for."""

    reason: str
    job_ids: frozenset[str]
    #: The hard limit passed, for the error message (time limits only).
    limit_s: float = 0.0


def overdue(attempts: Iterable[AttemptRecord], *, now_s: float, cancels_seen: Mapping[str, float]) -> Kill | None:
    """Whether a child must be killed now, and for which of its attempts.

    ``cancels_seen``: job id -> when (monotonic) the supervisor first saw its cancel request.
    A hard limit passed names the kill's reason when both apply.
    """
    records = [attempt for attempt in attempts if attempt.in_task]
    late = [a for a in records if a.deadline_s is not None and now_s >= a.deadline_s]
    stuck = [a for a in records if a.job_id in cancels_seen and now_s >= cancels_seen[a.job_id] + a.cancel_grace_s]
    if not late and not stuck:
        return None
    # NOTE: one kill ends every overdue attempt of the child at once; a cancelled one is recorded
    # cancelled whatever the reason (``lost_attempt_end`` sees its cancel request).
    job_ids = frozenset(a.job_id for a in late + stuck)
    if late:
        limit_s = max((a.deadline_s or now_s) - a.started_s for a in late)
        return Kill(KILL_TIME_LIMIT, job_ids, limit_s)
    return Kill(KILL_CANCEL, job_ids)

"""Claims and leases: a job runs only once its row is claimed for this worker with a lease.

The first of the worker's middleware: it claims the job before the task runs
(or takes the claim its consumer made ahead, ``services/worker/reservations.py``),
skips duplicate, cancelled, expired and orphan deliveries, and keeps the
``Attempt`` of every job running here, which the other middleware read
(``current``) and the heartbeat renews the lease of. It lets go of an attempt
in the last ``after_process_message`` hook, once its outcome is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextvars import Token
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from services.worker.callbacks import fail_undelivered
from services.worker.context import JobContext, enter_job, leave_job
from services.worker.held_jobs import HeldJobs
from services.worker.outages import persist
from services.worker.reservations import Reservations
from services.worker.status_writer import StatusWriter
from shared import metrics, tracing
from shared.job import Job, utcnow
from shared.logs import reset_log_context, set_log_context
from shared.results import ResultStorage
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)
#: How many ended jobs a process remembers (``_recent``): far more than end between a claim and its start.
RECENT_JOBS = 4096


@dataclass
class Attempt:
    """A job this process is running now, the thread running it, and what its hooks learn of it."""

    job: Job
    thread_id: int
    started_s: float = field(default_factory=time.monotonic)
    context: JobContext | None = None
    log_token: Any = None
    job_token: Token[JobContext | None] | None = None
    #: What the results middleware stored: the row's inline result and the result's URL.
    result: Any = None
    result_url: str | None = None
    #: Why the task's result could not be stored (the attempt then fails).
    result_error: Exception | None = None
    #: Set by the outcomes middleware: the attempt's outcome is committed here / left to the acker;
    #: a job found final at its claim is marked final too (its workflow moves on either way).
    final: bool = False
    ack_deferred: bool = False

    @property
    def in_task(self) -> bool:
        """Whether its thread is inside the task now (not before it, nor past it in the outcome hooks)."""
        return self.context is not None and not self.context.returned


#: Dramatiq's ``TimeLimit`` default (ms), which applies when neither the message nor the actor sets one.
DEFAULT_TIME_LIMIT_MS = 600_000


def _time_limit_s(broker: Broker, message: MessageProxy) -> float:
    """The attempt's time limit as ``TimeLimit`` reads it: the message's, else the actor's, else the default."""
    limit_ms = message.options.get("time_limit")
    if not limit_ms:
        try:
            limit_ms = broker.get_actor(message.actor_name).options.get("time_limit")
        except Exception:  # NOTE: an unknown actor is dead-lettered by Dramatiq itself; the default stands.
            limit_ms = None
    return float(limit_ms or DEFAULT_TIME_LIMIT_MS) / 1000


class Claims(Middleware):
    """Claims each delivery's job before it runs; skips the deliveries that must not run."""

    def __init__(
        self,
        store: JobStoreProtocol,
        writes: StatusWriter,
        results: ResultStorage,
        *,
        owner: str,
        lease_s: float,
        held: HeldJobs | None = None,
    ) -> None:
        self.store = store
        self.writes = writes
        self.results = results
        self.owner = owner
        self.lease_s = lease_s
        #: Claims made before messages are handed to threads (once ``threads`` is set).
        self.reservations = Reservations(
            claim_many=self.writes.claim_many,
            unclaim=lambda job_ids: self.store.unclaim(owner, job_ids),
            busy=self._busy,
            owner=owner,
            lease_s=lease_s,
            held=held,
        )
        self._running: dict[str, Attempt] = {}
        #: Jobs whose attempt ended here lately (under ``_lock``): an ``OWNED`` claim of one
        #: decided before its end is stale, and must not run it again.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def claim_ahead(self, threads: int) -> None:
        """Let the consumers claim for ``threads`` worker threads before handing out (reservations.py)."""
        self.reservations.threads = max(0, threads)

    def _busy(self) -> int:
        with self._lock:
            return len(self._running)

    # -- what other parts of the worker read -------------------------------

    def current(self, message: MessageProxy) -> Attempt | None:
        """The attempt this thread is running for ``message``, if its claim let it run.

        NOTE: every middleware asks this in every hook; a thread's own attempt is kept in a
        thread-local, so asking takes no lock.
        """
        attempt: Attempt | None = getattr(self._local, "attempt", None)
        return attempt if attempt is not None and attempt.job.id == message.message_id else None

    def running_job_ids(self) -> list[str]:
        """Jobs running here, and those claimed here that are about to start (both hold a lease)."""
        with self._lock:
            running = list(self._running)
        return running + self.reservations.job_ids()

    def running(self) -> list[Attempt]:
        with self._lock:
            return list(self._running.values())

    def is_running(self, job_id: str, thread_id: int) -> bool:
        """Whether ``thread_id`` is inside the task of ``job_id`` now (not past it, in the outcome hooks)."""
        with self._lock:
            attempt = self._running.get(job_id)
            return attempt is not None and attempt.thread_id == thread_id and attempt.in_task

    # -- Dramatiq hooks ----------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        try:
            with tracing.span("claim", expected=(SkipMessage,)):
                self._claim(broker, message)
        except SkipMessage:
            raise
        except Exception as exc:
            # NOTE: Dramatiq logs an error raised in a before hook and runs the task anyway; unclaimed,
            # it would run with no lease and no outcome recorded. The delivery is dead-lettered instead,
            # and its job failed saying why.
            log.exception("could not claim job %s; dead-lettering its delivery", message.message_id)
            error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__, "retryable": False}
            try:
                fail_undelivered(self.store, self.writes.callbacks, message.message_id, error)
            except Exception:
                log.exception("could not record the failed claim of job %s", message.message_id)
            attempt = self.current(message)
            if attempt is not None:
                self._local.attempt = None
                with self._lock:
                    self._running.pop(attempt.job.id, None)
            message.fail()
            raise SkipMessage() from None

    def _claim(self, broker: Broker, message: MessageProxy) -> None:
        labels = (message.actor_name, message.queue_name)
        with self._lock:
            claim = self._start(self.reservations.take(message.options.get("redis_message_id", "")))
        if claim is None:
            claimed = persist(lambda: self.writes.claim(ClaimRequest(message.message_id, self.owner, self.lease_s)))
            with self._lock:
                claim = self._start(claimed)
        if claim is None or claim.outcome is ClaimOutcome.DUPLICATE:
            metrics.jobs_duplicates_skipped_total.labels(*labels).inc()
            log.info("skipping duplicate delivery of job %s", message.message_id)
            raise SkipMessage()
        if claim.outcome in (ClaimOutcome.CANCELLED, ClaimOutcome.EXPIRED):
            counter = (
                metrics.jobs_cancelled_total if claim.outcome is ClaimOutcome.CANCELLED else metrics.jobs_expired_total
            )
            counter.labels(*labels).inc()
            if claim.job is not None:
                # Final at its claim: an attempt marked final until the skip hooks are done (its
                # workflow moves on in ``WorkflowAdvance.after_skip_message``).
                with self._lock:
                    if claim.job.id not in self._running:
                        final = Attempt(claim.job, threading.get_ident(), final=True)
                        self._running[claim.job.id] = self._local.attempt = final
            raise SkipMessage()
        if claim.outcome is ClaimOutcome.MISSING:
            log.error("message %s has no job row; dead-lettering it", message.message_id)
            message.fail()
            raise SkipMessage()
        job = claim.job
        assert job is not None
        with self._lock:
            attempt = self._running[job.id]
        attempt.log_token = set_log_context(
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempts,
            request_id=message.options.get("request_id"),
        )
        attempt.context = JobContext(
            job.id,
            job.task,
            job.attempts,
            self.store,
            self.results,
            queue=job.queue,
            max_retries=job.max_retries,
            deadline=utcnow() + timedelta(seconds=_time_limit_s(broker, message)),
            workflow_id=job.workflow_id,
        )
        attempt.job_token = enter_job(attempt.context)

    def _start(self, claim: Claim | None) -> Claim | None:
        """Register a claimed job as running on this thread (the caller holds ``_lock``).

        A claim of this worker's own that it lost the answer to (``OWNED``) is run here, unless a
        thread or a claim ahead already has the job: then this delivery is a duplicate.
        """
        if claim is None or claim.job is None or claim.outcome not in (ClaimOutcome.CLAIMED, ClaimOutcome.OWNED):
            return claim
        job = claim.job
        if claim.outcome is ClaimOutcome.OWNED:
            if job.id in self._running or job.id in self._recent or self.reservations.holds(job.id):
                return Claim(ClaimOutcome.DUPLICATE, job)
            log.warning("job %s was claimed by this worker without its knowing; running it", job.id)
        self._running[job.id] = self._local.attempt = Attempt(job, threading.get_ident())
        return Claim(ClaimOutcome.CLAIMED, job)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """The last hook of an attempt: its outcome is recorded, so the job leaves this thread."""
        attempt = self.current(message)
        if attempt is None:
            return
        self.reservations.observe(time.monotonic() - attempt.started_s)
        self._local.attempt = None
        with self._lock:
            self._running.pop(attempt.job.id, None)
            self._recent[attempt.job.id] = None
            if len(self._recent) > RECENT_JOBS:
                self._recent.popitem(last=False)
        if attempt.job_token is not None:
            leave_job(attempt.job_token)
        if attempt.log_token is not None:
            reset_log_context(attempt.log_token)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """The last skip hook: this thread's attempt, if any, leaves (never another thread's)."""
        attempt = self.current(message)
        if attempt is None:
            return
        self._local.attempt = None
        with self._lock:
            if self._running.get(attempt.job.id) is attempt:
                del self._running[attempt.job.id]

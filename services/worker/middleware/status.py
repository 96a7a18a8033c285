"""Job status: claim the row with a lease, run, record the outcome, then let Dramatiq ack.

NOTE: Dramatiq acks (or nacks) in ``post_process_message``, after every
``after_process_message`` hook has returned, so the final status write below
is committed before the message leaves Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.worker.acker import Acker
from services.worker.context import JobContext, enter_job, leave_job
from services.worker.outages import deliver, persist
from services.worker.reservations import Reservations
from services.worker.retry_policy import Decision, Retry, decide
from services.worker.status_writer import StatusWriter
from shared import metrics
from shared.catalog import Catalog, TaskDefinition
from shared.errors import TaskError
from shared.job import Job, JobStatus, utcnow
from shared.logs import reset_log_context, set_log_context
from shared.results import ResultStorage, encode_result
from shared.store.attempts import Claim, ClaimOutcome, ClaimRequest, FinishRequest
from shared.store.jobs import JobStore
from shared.waking_broker import DEFERRED_ACK, WakingRedisBroker

log = logging.getLogger(__name__)
#: How many ended jobs a process remembers (``_recent``): far more than end between a claim and its start.
RECENT_JOBS = 4096


def error_body(exc: BaseException, *, retryable: bool) -> dict[str, Any]:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeLimitExceeded):
        message = "the task exceeded its time limit"
    return {
        "type": type(exc).__name__,
        "message": message[:2000],
        "retryable": retryable,
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }


class Cancelled(BaseException):
    """Raised inside a running task whose job was cancelled (a BaseException, so `except Exception` misses it)."""


class HardTimeLimitExceeded(Exception):
    """Recorded for a job whose process was replaced because it ran past its hard time limit."""


@dataclass
class Running:
    """A job this process is running now, and the thread running it."""

    job: Job
    thread_id: int
    started_s: float = field(default_factory=time.monotonic)


class JobStatusMiddleware(Middleware):
    """Records every transition of a job in the store; skips duplicates and cancelled jobs."""

    def __init__(
        self,
        store: JobStore,
        catalog: Catalog,
        results: ResultStorage,
        *,
        owner: str,
        lease_s: float,
        inline_max_bytes: int,
        on_final: Callable[[Job], None] | None = None,
        writes: StatusWriter | None = None,
    ) -> None:
        self.store = store
        #: Claims and finishes go through here: a StatusWriter batches them in a busy process.
        self.writes = writes or StatusWriter(store)
        self.catalog = catalog
        self.results = results
        self.owner = owner
        self.lease_s = lease_s
        self.inline_max_bytes = inline_max_bytes
        #: Called once a job's final status is committed (workflows advance from here).
        self.on_final = on_final
        #: Set by ``defer_acks``: succeeded jobs are then acked after their commit, off the worker thread.
        self.acker: Acker | None = None
        #: Claims made before messages are handed to threads (once ``claim_ahead`` is called).
        self.reservations = Reservations(
            claim_many=self.writes.claim_many,
            unclaim=lambda job_ids: self.store.unclaim(owner, job_ids),
            busy=self._busy,
            owner=owner,
            lease_s=lease_s,
        )
        self._running: dict[str, Running] = {}
        #: Jobs whose attempt ended here lately (under ``_running_lock``): an ``OWNED`` claim of one
        #: decided before its end is stale, and must not run it again.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._running_lock = threading.Lock()
        self._local = threading.local()

    def defer_acks(self, broker: WakingRedisBroker) -> None:
        """Let worker threads move on without waiting for a succeeded job's commit and ack."""
        self.acker = Acker(broker, on_final=self._ended)

    def claim_ahead(self, broker: WakingRedisBroker, threads: int) -> None:
        """Let ``broker``'s consumers claim for ``threads`` worker threads before handing out (reservations.py)."""
        if threads < 1:
            return
        self.reservations.threads = threads
        broker.claims_ahead = self.reservations

    def _busy(self) -> int:
        with self._running_lock:
            return len(self._running)

    def cancel_reserved(self, job_ids: set[str]) -> None:
        """Record cancelled the claimed jobs an operator cancelled before they started."""
        error = {"type": "Cancelled", "message": "cancelled before it started", "retryable": False}
        for claim in self.reservations.drop_jobs(job_ids):
            job = claim.job
            if job is None:
                continue
            self._finish(job, JobStatus.CANCELLED, error=error)
            metrics.jobs_cancelled_total.labels(job.task, job.queue).inc()
            log.info("job %s cancelled before it started", job.id)
            self._ended(job)

    def close(self) -> None:
        """Commit and ack what is still pending (after the worker stopped)."""
        self.writes.stop()
        if self.acker is not None:
            self.acker.stop()

    # -- what other parts of the worker read -------------------------------

    def running_job_ids(self) -> list[str]:
        """Jobs running here, and those claimed here that are about to start (both hold a lease)."""
        with self._running_lock:
            running = list(self._running)
        return running + self.reservations.job_ids()

    def running(self) -> list[Running]:
        with self._running_lock:
            return list(self._running.values())

    def is_running(self, job_id: str, thread_id: int) -> bool:
        with self._running_lock:
            entry = self._running.get(job_id)
            return entry is not None and entry.thread_id == thread_id

    # -- Dramatiq hooks ----------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        labels = (message.actor_name, message.queue_name)
        with self._running_lock:
            claim = self._start(self.reservations.take(message.options.get("redis_message_id", "")))
        if claim is None:
            claimed = persist(lambda: self.writes.claim(ClaimRequest(message.message_id, self.owner, self.lease_s)))
            with self._running_lock:
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
                self._ended(claim.job)
            raise SkipMessage()
        if claim.outcome is ClaimOutcome.MISSING:
            log.error("message %s has no job row; dead-lettering it", message.message_id)
            message.fail()
            raise SkipMessage()
        job = claim.job
        assert job is not None
        due = job.next_attempt_at or job.scheduled_for or job.created_at
        series = metrics.job_series(*labels)
        if job.attempts == 1:
            series.queue_wait.observe(max(0.0, (utcnow() - due).total_seconds()))
        series.started.inc()
        series.in_progress.inc()
        self._local.started = time.perf_counter()
        self._local.log_token = set_log_context(
            job_id=job.id,
            task=job.task,
            queue=job.queue,
            attempt=job.attempts,
            request_id=message.options.get("request_id"),
        )
        self._local.context = JobContext(job.id, job.task, job.attempts, self.store, self.results)
        self._local.job_token = enter_job(self._local.context)

    def _start(self, claim: Claim | None) -> Claim | None:
        """Register a claimed job as running on this thread (the caller holds ``_running_lock``).

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
        self._running[job.id] = Running(job, threading.get_ident())
        return Claim(ClaimOutcome.CLAIMED, job)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._running_lock:
            entry = self._running.pop(message.message_id, None)
            if entry is not None:
                self._recent[entry.job.id] = None
                if len(self._recent) > RECENT_JOBS:
                    self._recent.popitem(last=False)
        if entry is None:
            return
        job = entry.job
        series = metrics.job_series(job.task, job.queue)
        leave_job(self._local.job_token)
        series.in_progress.dec()
        elapsed_s = time.perf_counter() - self._local.started
        self.reservations.observe(elapsed_s)
        series.duration.observe(elapsed_s)
        try:
            if exception is None:
                try:
                    deferred = self._succeed(
                        message, job, self._local.context.result, self._local.context.result_file_type
                    )
                except Exception as exc:
                    # NOTE: the task ran but its result could not be stored (result storage full or
                    # away); left alone, the row would stay running with its message acked.
                    log.error("job %s: storing its result failed: %s", job.id, exc)
                    self._fail(broker, message, job, exc)
                    self._ended(job)
                else:
                    series.succeeded.inc()
                    log.info("job succeeded in %.3fs", elapsed_s)
                    if not deferred:
                        self._ended(job)
            else:
                self._fail(broker, message, job, exception)
                self._ended(job)
        finally:
            reset_log_context(self._local.log_token)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """A message Dramatiq dead-letters on its own (an actor no worker has) fails its job for good."""
        exc = message._exception
        if exc is None:
            return
        error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__, "retryable": False}
        try:
            if self.store.fail_undelivered(message.message_id, error):
                metrics.jobs_failed_total.labels(message.actor_name, message.queue_name).inc()
                log.error("job %s dead-lettered without running: %s", message.message_id, error["message"])
        except Exception:
            log.exception("could not record the dead letter of job %s", message.message_id)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._running_lock:
            self._running.pop(message.message_id, None)

    # -- outcomes ----------------------------------------------------------

    def _ended(self, job: Job) -> None:
        """Let the workflow of a job move on; the scheduler retries this if it fails here."""
        if job.workflow_id is None or self.on_final is None:
            return
        try:
            self.on_final(job)
        except Exception:
            log.exception("advancing workflow %s failed; housekeeping will retry", job.workflow_id)

    def _succeed(self, message: MessageProxy, job: Job, result: Any, result_file_type: str | None) -> bool:
        """Record the success; True when its commit, ack and ``on_final`` are left to the acker."""
        body = encode_result(result)
        result_url = f"/v1/jobs/{job.id}/result" if result_file_type else None
        if result_url is None and len(body) > self.inline_max_bytes:
            self.results.put(job.id, body, "application/json")
            result, result_url = None, f"/v1/jobs/{job.id}/result"
        if self.acker is not None:
            request = FinishRequest(job.id, self.owner, JobStatus.SUCCEEDED, result=result, result_url=result_url)
            setattr(message, DEFERRED_ACK, self.acker.after(self.writes.finish_later(request), job))
            return True
        if not self._finish(job, JobStatus.SUCCEEDED, result=result, result_url=result_url):
            log.warning("job %s finished after its lease passed to another worker", job.id)
        return False

    def _finish(self, job: Job, status: JobStatus, **fields: Any) -> bool:
        """Record the end of this attempt, waiting out a store outage; False if the lease was lost."""
        request = FinishRequest(job.id, self.owner, status, **fields)
        return persist(lambda: self.writes.finish(request))

    def _decide(self, job: Job, exc: BaseException) -> tuple[Decision, dict[str, Any]]:
        try:
            definition: TaskDefinition | None = self.catalog.get(job.task)
        except TaskError:
            definition = None
        decision = decide(definition, exc, attempts=job.attempts, max_retries=job.max_retries)
        return decision, error_body(exc, retryable=decision.retryable)

    def record_hard_timeout(self, job: Job, limit_s: float) -> None:
        """Record the outcome of a job whose process is about to be replaced.

        Nothing is enqueued: the message stays unacked, and the supervisor puts it
        back when this process is gone; a ``retrying`` row lets it run again.
        """
        exc = HardTimeLimitExceeded(f"the task ran past its hard time limit of {limit_s:g}s; its process was replaced")
        decision, error = self._decide(job, exc)
        status = JobStatus.RETRYING if decision.retry else JobStatus.FAILED
        self.store.finish(job.id, owner=self.owner, status=status, error=error, next_attempt_at=utcnow())
        counter = metrics.jobs_retried_total if decision.retry else metrics.jobs_failed_total
        counter.labels(job.task, job.queue).inc()

    def _fail(self, broker: Broker, message: MessageProxy, job: Job, exc: BaseException) -> None:
        labels = (job.task, job.queue)
        if isinstance(exc, Cancelled):
            error = {"type": "Cancelled", "message": "cancelled while running", "retryable": False}
            self._finish(job, JobStatus.CANCELLED, error=error)
            metrics.jobs_cancelled_total.labels(*labels).inc()
            log.info("job %s cancelled while running", job.id)
            return
        decision, error = self._decide(job, exc)
        if decision.retry:
            next_at = utcnow() + timedelta(seconds=decision.delay_s)
            self._finish(job, JobStatus.RETRYING, error=error, next_attempt_at=next_at)
            # A new message for the next attempt; the current one is acked after this hook.
            retry: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=job.queue,
                actor_name=job.task,
                args=(),
                kwargs=message.kwargs,
                options={k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id")},
                message_id=job.id,
                message_timestamp=message.message_timestamp,
            )
            deliver(lambda: broker.enqueue(retry, delay=int(decision.delay_s * 1000)))
            metrics.jobs_retried_total.labels(*labels).inc()
            if not isinstance(exc, Retry):
                log.warning("job %s attempt %d failed, retrying in %.2fs", job.id, job.attempts, decision.delay_s)
            return
        self._finish(job, JobStatus.FAILED, error=error)
        metrics.jobs_failed_total.labels(*labels).inc()
        log.error("job %s failed for good after %d attempt(s): %s", job.id, job.attempts, error["message"])
        # Dramatiq nacks failed messages, which moves them to the dead-letter queue.
        message.fail()

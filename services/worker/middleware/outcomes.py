"""Outcomes: every attempt's end is recorded in the store (succeeded, retrying, failed, cancelled).

A success, and a failure for good, is handed to the status writer and its message
acked (or dead-lettered) by the acker once the commit is done, off the worker
thread, many per commit and per Redis call; any other outcome is committed here,
waiting out a store outage, before Dramatiq acks the message. A retry gets a new
message (its row says ``retrying`` first).

Each success is a DEBUG line; at INFO the worker writes how many jobs succeeded, by task, at most
once per ``SUCCESS_SUMMARY_EVERY_S`` (retries are a WARNING line each, failures for good an ERROR).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from dramatiq.middleware.time_limit import TimeLimitExceeded

from services.worker.acker import Acker
from services.worker.callbacks import fail_undelivered
from services.worker.middleware.claims import Attempt, Claims
from services.worker.middleware.workflows import WorkflowAdvance
from services.worker.outages import deliver, persist
from services.worker.retry_policy import Decision, Retry, decide
from services.worker.status_writer import StatusWriter
from shared import metrics, tracing
from shared.catalog import Catalog, TaskDefinition
from shared.errors import TaskError
from shared.flow.buckets import RATE_TICKET
from shared.job import Job, JobStatus, utcnow
from shared.logs import log_with_trace
from shared.store.attempts import FinishRequest
from shared.store.protocol import JobStoreProtocol

log = logging.getLogger(__name__)
#: Seconds between the INFO lines counting the jobs that succeeded (each one is a DEBUG line).
#: NOTE: a JSON line per succeeded job cost about a quarter of a no-op job's CPU in the worker; Dramatiq
#: logs nothing per message at INFO, and Celery's worker logs its per-task lines only below its default
#: level (WARNING).
SUCCESS_SUMMARY_EVERY_S = 10.0


def format_trace(exc: BaseException) -> str:
    """The exception's traceback as Python prints it, without the ``^^^^`` lines under the failing
    expressions (its message replaced if printing it raises).

    NOTE: Python 3.11 finds where those marks go by parsing each frame's source line (``ast``), which
    cost as much as recording the rest of a failure; the frames, lines and messages are all kept.
    """
    trace = _safe(lambda: "".join(_without_columns(traceback.TracebackException.from_exception(exc)).format()))
    if trace is None:
        trace = "".join(traceback.format_tb(exc.__traceback__)) + f"{type(exc).__name__}: <message unprintable>\n"
    return trace


def _without_columns(trace: traceback.TracebackException) -> traceback.TracebackException:
    """The same traceback with no column positions in its frames (nor in its causes' and groups')."""
    pending, seen = [trace], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for frame in current.stack:
            frame.colno = frame.end_colno = None
        pending.extend(t for t in (current.__cause__, current.__context__) if t is not None)
        pending.extend(getattr(current, "exceptions", None) or ())
    return trace


def error_body(exc: BaseException, *, retryable: bool, trace: str | None = None) -> dict[str, Any]:
    """``type``, ``message`` and ``retryable`` for every reader; ``traceback`` for admins (the API strips it).

    ``trace``: the exception's ``format_trace``, when the caller has it already.
    NOTE: an exception's ``__str__`` is user code and may raise; the error is recorded anyway.
    """
    message = _safe(lambda: str(exc)) or type(exc).__name__
    if isinstance(exc, TimeLimitExceeded):
        message = "the task exceeded its time limit"
    if trace is None:
        trace = format_trace(exc)
    return {
        "type": type(exc).__name__,
        "message": message[:2000],
        "retryable": retryable,
        "traceback": trace[-4000:],
    }


def _safe(text: Callable[[], str]) -> str | None:
    try:
        return text()
    except Exception:
        return None


class Cancelled(BaseException):
    """Raised inside a running task whose job was cancelled (a BaseException, so `except Exception` misses it)."""


class HardTimeLimitExceeded(Exception):
    """Recorded for a job whose process its supervisor killed because it ran past its hard time limit."""


class Outcomes(Middleware):
    """Listed after ``WorkflowAdvance`` and before ``Results`` (hooks run last-listed first)."""

    def __init__(
        self,
        store: JobStoreProtocol,
        writes: StatusWriter,
        catalog: Catalog,
        *,
        claims: Claims,
        workflows: WorkflowAdvance,
        acker: Acker | None,
        owner: str,
    ) -> None:
        self.store = store
        self.writes = writes
        self.catalog = catalog
        self.claims = claims
        self.workflows = workflows
        #: Succeeded jobs are acked after their commit, off the worker thread (None: at once).
        self.acker = acker
        self.owner = owner
        #: The on_success / on_failure callbacks (None: none are submitted); the writer publishes them.
        self.callbacks = writes.callbacks
        #: Jobs whose failure for good was recorded here and whose nack has not been seen yet
        #: (``after_nack`` must not record them again).
        self._failed_here: set[str] = set()
        self._failed_lock = threading.Lock()
        #: Jobs that succeeded since the last summary line, by task, and since when (monotonic).
        self._succeeded: dict[str, int] = {}
        self._summary_since_s = time.monotonic()
        self._summary_lock = threading.Lock()

    def close(self) -> None:
        """Commit and ack what is still pending (after the worker stopped), and count the last successes."""
        self.writes.stop()
        if self.acker is not None:
            self.acker.stop()
        self._summarize(force=True)

    def _count_success(self, task: str) -> None:
        with self._summary_lock:
            self._succeeded[task] = self._succeeded.get(task, 0) + 1
        self._summarize()

    def _summarize(self, *, force: bool = False) -> None:
        """The INFO line counting the successes since the last one, once ``SUCCESS_SUMMARY_EVERY_S`` passed."""
        now_s = time.monotonic()
        with self._summary_lock:
            if not self._succeeded or (not force and now_s - self._summary_since_s < SUCCESS_SUMMARY_EVERY_S):
                return
            counts, self._succeeded = self._succeeded, {}
            since_s, self._summary_since_s = self._summary_since_s, now_s
        by_task = ", ".join(f"{task} {count}" for task, count in sorted(counts.items()))
        # NOTE: in a context of its own: the line counts many jobs, and must not carry this thread's job's fields.
        contextvars.Context().run(
            log.info, "%d job(s) succeeded in the last %.0f s (%s)", sum(counts.values()), now_s - since_s, by_task
        )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with tracing.span("finish"):
            self._record(broker, message, exception)

    def _record(self, broker: Broker, message: MessageProxy, exception: BaseException | None) -> None:
        """Record the attempt's outcome (its commit is the acker's on a success)."""
        attempt = self.claims.current(message)
        if attempt is None:
            return
        job = attempt.job
        failure = exception if exception is not None else attempt.result_error
        if failure is not None:
            attempt.ack_deferred = self._fail(broker, message, job, failure)
            attempt.final = not attempt.ack_deferred
            return
        attempt.ack_deferred = self._succeed(message, attempt)
        attempt.final = not attempt.ack_deferred
        metrics.job_series(job.task, job.queue).succeeded.inc()
        log.debug("job succeeded in %.3fs", time.monotonic() - attempt.started_s)
        self._count_success(job.task)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """A message Dramatiq dead-letters on its own (an actor no worker has) fails its job for good."""
        with self._failed_lock:
            if message.message_id in self._failed_here:
                # NOTE: recorded failed by ``_fail`` (committed, or left to the acker): nothing more to write.
                self._failed_here.discard(message.message_id)
                return
        exc = message._exception
        if exc is None:
            return
        error = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__, "retryable": False}
        try:
            if fail_undelivered(self.store, self.callbacks, message.message_id, error):
                metrics.jobs_failed_total.labels(message.actor_name, message.queue_name).inc()
                log.error("job %s dead-lettered without running: %s", message.message_id, error["message"])
        except Exception:
            log.exception("could not record the dead letter of job %s", message.message_id)

    # -- outcomes decided outside an attempt's hooks (the watchdog's) ---------

    def cancel_reserved(self, job_ids: set[str]) -> None:
        """Record cancelled the claimed jobs an operator cancelled before they started."""
        error = {"type": "Cancelled", "message": "cancelled before it started", "retryable": False}
        for claim in self.claims.reservations.drop_jobs(job_ids):
            job = claim.job
            if job is None:
                continue
            self._finish(job, JobStatus.CANCELLED, error=error)
            metrics.jobs_cancelled_total.labels(job.task, job.queue).inc()
            log.info("job %s cancelled before it started", job.id)
            self.workflows.ended(job)

    # -- writes ----------------------------------------------------------------

    def _succeed(self, message: MessageProxy, attempt: Attempt) -> bool:
        """Record the success; True when its commit, ack and workflow advance are left to the acker."""
        job = attempt.job
        callback = self._callback(job, JobStatus.SUCCEEDED, result=attempt.result)
        fields = {"result": attempt.result, "result_url": attempt.result_url, **callback}
        if self._finish_later(message, job, JobStatus.SUCCEEDED, fields):
            return True
        if not self._finish(job, JobStatus.SUCCEEDED, **fields):
            log.warning("job %s finished after its lease passed to another worker", job.id)
        return False

    def _finish_later(self, message: MessageProxy, job: Job, status: JobStatus, fields: dict[str, Any]) -> bool:
        """Hand a final outcome to the status writer and its ack (or, failed, its dead letter) to the acker;
        False when there is no acker (the caller commits it now)."""
        if self.acker is None:
            return False
        request = FinishRequest(job.id, self.owner, status, **self._attempt_of(job), **fields)
        committed = self.writes.finish_later(request)
        self.acker.defer(message.options["redis_message_id"], committed, job, dead=status is JobStatus.FAILED)
        return True

    def _finish(self, job: Job, status: JobStatus, **fields: Any) -> bool:
        """Record the end of this attempt, waiting out a store outage; False if the lease was lost."""
        request = FinishRequest(job.id, self.owner, status, **self._attempt_of(job), **fields)
        return persist(lambda: self.writes.finish(request))

    @staticmethod
    def _attempt_of(job: Job) -> dict[str, Any]:
        """The attempt a finish ends, for the job's history (``job_attempts``): as claimed."""
        return {"attempt": job.attempts, "started_at": job.started_at}

    def _callback(
        self, job: Job, status: JobStatus, *, result: Any = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The callback fields of this outcome's finish: only a success or a failure for good has one."""
        if self.callbacks is None:
            return {}
        return self.callbacks.fields(job, status, result=result, error=error)

    def _decide(self, job: Job, exc: BaseException, trace: str) -> tuple[Decision, dict[str, Any]]:
        try:
            definition: TaskDefinition | None = self.catalog.get(job.task)
        except TaskError:
            definition = None
        decision = decide(definition, exc, attempts=job.attempts, max_retries=job.max_retries)
        return decision, error_body(exc, retryable=decision.retryable, trace=trace)

    def _fail(self, broker: Broker, message: MessageProxy, job: Job, exc: BaseException) -> bool:
        """Record a failed attempt; True when its commit, dead letter and workflow advance are left to the acker."""
        labels = (job.task, job.queue)
        if isinstance(exc, Cancelled):
            error = {"type": "Cancelled", "message": "cancelled while running", "retryable": False}
            self._finish(job, JobStatus.CANCELLED, error=error)
            metrics.jobs_cancelled_total.labels(*labels).inc()
            log.info("job %s cancelled while running", job.id)
            return False
        trace = format_trace(exc)
        decision, error = self._decide(job, exc, trace)
        if decision.retry:
            next_at = utcnow() + timedelta(seconds=decision.delay_s)
            self._finish(job, JobStatus.RETRYING, error=error, next_attempt_at=next_at)
            # A new message for the next attempt; the current one is acked after this hook.
            retry: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=job.queue,
                actor_name=job.task,
                args=(),
                kwargs=message.kwargs,
                # A rate token reserved for the message that failed is spent: the retry takes its own.
                options={k: v for k, v in message.options.items() if k not in ("eta", "redis_message_id", RATE_TICKET)},
                message_id=job.id,
                message_timestamp=message.message_timestamp,
            )
            deliver(lambda: broker.enqueue(retry, delay=int(decision.delay_s * 1000)))
            metrics.jobs_retried_total.labels(*labels).inc()
            if not isinstance(exc, Retry):
                log.warning("job %s attempt %d failed, retrying in %.2fs", job.id, job.attempts, decision.delay_s)
            return False
        fields = {"error": error, **self._callback(job, JobStatus.FAILED, error=error)}
        with self._failed_lock:
            self._failed_here.add(job.id)
        deferred = self._finish_later(message, job, JobStatus.FAILED, fields)
        if not deferred:
            self._finish(job, JobStatus.FAILED, **fields)
        metrics.jobs_failed_total.labels(*labels).inc()
        log_with_trace(
            log, logging.ERROR, trace, "job %s failed for good after %d attempt(s): %s", job.id, job.attempts,
            error["message"],
        )  # fmt: skip
        # Dramatiq nacks failed messages: the consumer hands the nack to the acker (deferred), which
        # moves the message to the dead letters once the failure is committed.
        message.fail()
        return deferred
